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

extensions = [Extension("surgseg_core.methods.liver._kernels", ["src/surgseg_core/methods/liver/_kernels.pyx"])]
if cythonize is not None:
    extensions = cythonize(extensions, quiet=True)
else:
    extensions = []
for ext in extensions:
    ext.optional = True  # a failed compile skips the extension (cythonize drops the flag, so set it after)
setup(ext_modules=extensions)
