"""sammoe expert plugin 'textured_lesion': SAM-Med3D tiny expert decoder for a lesion defined by texture, not brightness, inside the liver of phantom volumes"""

from sammoe.plugins import ExpertManifest


def manifest() -> ExpertManifest:
    """Entry point of group `sammoe.experts`: reads the packaged manifest.json, imports no torch."""
    return ExpertManifest.from_package(__name__)
