"""Build of the optional compiled kernels (everything else is in pyproject.toml).

``surgseg_core.methods.liver._kernels`` speeds up the liver post-processing;
when it cannot be compiled (no C compiler), installation still succeeds and
the numpy versions of the same functions are used.
"""
from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - Cython is a build requirement
    cythonize = None

extensions = [Extension("surgseg_core.methods.liver._kernels",
                        ["src/surgseg_core/methods/liver/_kernels.pyx"], optional=True)]
setup(ext_modules=cythonize(extensions, quiet=True) if cythonize else [])
