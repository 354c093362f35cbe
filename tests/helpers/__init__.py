"""Helpers shared by the tests (import as `from helpers.X import ...`); fixtures live in conftest.py."""
