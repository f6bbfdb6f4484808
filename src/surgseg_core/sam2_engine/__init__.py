"""SAM2 video segmentation engine: model building, device choice, a
streaming propagation engine with bounded memory, writers and provenance.

    from surgseg_core.sam2_engine import build_model, StreamingSAM2, PngLabelWriter
    model = build_model("sam2.1_hiera_tiny", checkpoint="sam2.1_hiera_tiny")
    engine = StreamingSAM2(model, frames)
    engine.add_points(0, obj_id=1, points=[[320, 240]], labels=[1])
    engine.propagate(PngLabelWriter("masks/"), direction="both")
"""
from ..device import autocast, resolve_device
from ..weights.hashing import sha256_file
from ..weights.state_dict import read_state_dict
from .build import TINY_CONFIG, available_configs, build_model, read_sam2_state
from .embedding_cache import EmbeddingCache
from .engine import StreamingSAM2, preprocess_frame
from .heads import FrameFeatures, HeadOutput, decode_masks, encode_frames, prompt_points
from .memory import MemoryPolicy
from .outputs import ArrayWriter, FrameResult, PngLabelWriter, Tee
from .provenance import build_provenance
from .session import ClickSession
from .variants import Variant, available_variants, get_variant, register_variant

pick_device = resolve_device  # historical name
load_state_dict_file = read_sam2_state  # historical name

__all__ = [
    "TINY_CONFIG",
    "ArrayWriter",
    "ClickSession",
    "FrameFeatures",
    "HeadOutput",
    "Variant",
    "available_variants",
    "decode_masks",
    "encode_frames",
    "get_variant",
    "prompt_points",
    "read_state_dict",
    "register_variant",
    "resolve_device",
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
