"""A sammoe expert plugin; its name, task and description are in manifest.json beside it."""

from sammoe.plugins import ExpertManifest


def manifest() -> ExpertManifest:
    """Entry point of group `sammoe.experts`: reads the packaged manifest.json, imports no torch."""
    return ExpertManifest.from_package(__name__)
