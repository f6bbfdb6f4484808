"""surgseg_core: segmentation and landmarks for endoscopic surgery videos.

Plain Python, no Qt and no napari: the napari plugin (``napari_surgseg``) and
the ``surgseg`` CLI are thin layers over this package.
"""
from .errors import SurgsegError


def __getattr__(name: str):
    """``__version__`` on first use: importing importlib.metadata and looking
    the distribution up cost ~25-30 ms of every ``import surgseg_core.io``
    (the time to a video's first frame in a fresh process)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("napari-surgseg")
        except PackageNotFoundError:  # running from a source tree
            value = "0.0.0+src"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SurgsegError", "__version__"]
