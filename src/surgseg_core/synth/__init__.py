"""Deterministic synthetic endoscopy data with ground truth for every method.

* :func:`generate_endoscopy_clip` - endonasal-style clip: instruments (masks,
  ids, tip/anchor landmarks with action) and 6-class pituitary anatomy labels.
* :func:`generate_liver_scene` - laparoscopic liver frames with silhouette,
  ridge and falciform-ligament curves (polylines and index masks).
* :func:`write_synthetic_clip`, :func:`write_liver_dataset` - the on-disk
  layouts described in ``FORMATS.md`` (next to this file).

Everything is a pure function of the seed and sizes (numpy ``Generator`` only):
command line: ``python -m surgseg_core.synth --help``.
"""
from .endoscopy import (
    ACTIONS,
    ANATOMY_CLASSES,
    GENERATOR_VERSION,
    TOOL_TYPES,
    EndoscopyClip,
    SynthFrame,
    generate_endoscopy_clip,
)
from .fov import FOV
from .liver import CURVE_NAMES, LIVER_CLASSES, LiverFrame, LiverScene, default_line_width, generate_liver_scene
from .writer import (
    read_liver_curves,
    read_tool_landmarks,
    write_liver_dataset,
    write_liver_training_folder,
    write_synthetic_clip,
)

__all__ = [
    "ACTIONS",
    "ANATOMY_CLASSES",
    "CURVE_NAMES",
    "FOV",
    "GENERATOR_VERSION",
    "LIVER_CLASSES",
    "TOOL_TYPES",
    "EndoscopyClip",
    "LiverFrame",
    "LiverScene",
    "SynthFrame",
    "default_line_width",
    "generate_endoscopy_clip",
    "generate_liver_scene",
    "read_liver_curves",
    "read_tool_landmarks",
    "write_liver_dataset",
    "write_liver_training_folder",
    "write_synthetic_clip",
]
