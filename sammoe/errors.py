"""Errors a user can cause. Each message says what was wrong and how to fix it."""


class SammoeError(Exception):
    """Base class: the CLI prints the message on one line and exits with status 2."""


class CheckpointError(SammoeError):
    """A weights file is unreadable or does not match the model."""


class DataError(SammoeError):
    """An image, label or dataset on disk is unusable."""


class PluginError(SammoeError):
    """An expert plugin is broken or incompatible."""


class ConfigError(SammoeError):
    """A configuration or command-line value is invalid."""
