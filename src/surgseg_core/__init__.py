"""surgseg_core: segmentation and landmarks for endoscopic surgery videos.

Plain Python, no Qt and no napari: the napari plugin (``napari_surgseg``) and
the ``surgseg`` CLI are thin layers over this package.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-surgseg")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

from .errors import SurgsegError  # noqa: E402

__all__ = ["SurgsegError", "__version__"]
