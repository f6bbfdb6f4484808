"""napari-surgseg: the napari plugin over ``surgseg_core``.

Widgets are thin: they gather input, call one core function in a worker and
show the result as layers. All model work lives in ``surgseg_core``.
"""
try:
    from surgseg_core import __version__
except ImportError:  # pragma: no cover
    __version__ = "0.0.0"

from ._triton_guard import install as _install_triton_guard

# before any of the plugin's code can reach torch: see _triton_guard
_install_triton_guard()

__all__ = ["__version__"]
