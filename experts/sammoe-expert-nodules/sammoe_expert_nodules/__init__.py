"""sammoe expert plugin 'nodules': SAM-Med3D tiny expert decoder for small round lung nodules on phantom volumes"""

from sammoe.plugins import ExpertManifest


def manifest() -> ExpertManifest:
    """Entry point of group `sammoe.experts`: reads the packaged manifest.json, imports no torch."""
    return ExpertManifest.from_package(__name__)
