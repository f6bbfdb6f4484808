"""SAM2 video segmentation engine: model building, device choice, a
streaming propagation engine with bounded memory, writers and provenance.

    from surgseg_core.sam2_engine import build_model, StreamingSAM2, PngLabelWriter
    model = build_model("sam2.1_hiera_tiny", checkpoint="sam2.1_hiera_tiny")
    engine = StreamingSAM2(model, frames)
    engine.add_points(0, obj_id=1, points=[[320, 240]], labels=[1])
    engine.propagate(PngLabelWriter("masks/"), direction="both")
"""
from .build import TINY_CONFIG, available_configs, build_model, load_state_dict_file
from .device import autocast, pick_device
from .embedding_cache import EmbeddingCache
from .engine import StreamingSAM2, preprocess_frame
from .memory import MemoryPolicy
from .outputs import ArrayWriter, FrameResult, PngLabelWriter, Tee
from .provenance import build_provenance, sha256_file

__all__ = [
    "TINY_CONFIG",
    "ArrayWriter",
    "EmbeddingCache",
    "FrameResult",
    "MemoryPolicy",
    "PngLabelWriter",
    "StreamingSAM2",
    "Tee",
    "autocast",
    "available_configs",
    "build_model",
    "build_provenance",
    "load_state_dict_file",
    "pick_device",
    "preprocess_frame",
    "sha256_file",
]
