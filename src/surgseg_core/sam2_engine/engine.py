"""Streaming SAM2 video propagation with bounded memory.

This is SAM2's own video algorithm (``SAM2VideoPredictor``: same model
calls, same memory selection, same prompt/correction semantics) driven from
a lazy frame source instead of ``init_state``, which loads the whole video
and keeps every frame's output. Frames are read and preprocessed on demand
(during propagation one frame ahead, on a background thread), image
features live in a size-capped LRU cache, the memory bank keeps only what
memory attention can read (``memory.MemoryPolicy``) and each frame's
masks go to a sink as soon as they exist. We call SAM2's model methods
(``forward_image``, ``track_step``, ``_encode_new_memory``) and hand-write
only the state management, because that is exactly the part of SAM2 that
is not streaming.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, VideoError
from ..io.pixels import frame_to_rgb8
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from ..device import autocast as _autocast
from ..device import enable_fast_math, resolve_inference_precision
from . import cpu_attention as cpu_attention_module
from .embedding_cache import EmbeddingCache
from .heads import FrameFeatures, decode_masks, encode_frames, flat_features, parse_prompt, reordered_float32
from .memory import BACKWARD, FORWARD, UNTRACKED, MemoryPolicy, ObjectMemory
from .onednn_linear import PackedLinears
from .outputs import FrameResult
from .provenance import build_provenance

log = logging.getLogger(__name__)

NO_OBJ_SCORE = -1024.0  # SAM2's placeholder logit for "object absent"
IMG_MEAN = (0.485, 0.456, 0.406)  # SAM2's loader normalisation
IMG_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
_STD = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
_MEAN_NP = _MEAN.numpy()
_STD_NP = _STD.numpy()

Sink = Callable[[FrameResult], None]
# prompt_hook(frame_idx, point_coords (B, P, 2) in model pixels, point_labels
# (B, P), that frame's FrameFeatures) -> (point_coords, point_labels)
PromptHook = Callable[[int, torch.Tensor, torch.Tensor, FrameFeatures], Tuple[torch.Tensor, torch.Tensor]]


def _locked(method):
    """Serialise public operations on one engine (GUI clicks vs a worker)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def preprocess_frame(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float32, exactly like SAM2's frame loader
    (PIL resize, /255, ImageNet mean/std) minus its JPEG round trip."""
    from PIL import Image

    # grey / RGBA / 16-bit / float-in-0..1 frames -> RGB uint8 (clear VideoError otherwise)
    arr = frame_to_rgb8(frame, "SAM2 input frame")
    img = np.array(Image.fromarray(np.ascontiguousarray(arr)).resize((image_size, image_size)))
    # Same float32 operations in the same order as SAM2's loader, (x / 255 - mean) / std,
    # each correctly rounded, so the values are identical; in numpy rather than torch
    # because this runs on the read-ahead thread, where torch ops would start a second
    # OpenMP team that competes with the model's threads for the cores.
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    chw /= np.float32(255.0)
    chw -= _MEAN_NP
    chw /= _STD_NP
    return torch.from_numpy(chw)


def _grad_off(precision) -> ContextManager:
    """``inference_mode``, except under autocast: autocast keeps its bf16 copy
    of each float32 weight for as long as its context lasts (a whole
    propagation) only outside ``inference_mode``; inside it every linear
    layer re-casts its weight on every call (SAM2.1-tiny: ~39 M weights a
    frame). ``no_grad`` gives the same results."""
    if precision.encoder is None and precision.heads is None:
        return torch.inference_mode()
    return torch.no_grad()


def _has_hole_filling() -> bool:
    # SAM2 fills small mask holes with its optional CUDA extension; without it
    # SAM2 warns and leaves the mask unchanged. We check once instead of
    # warning on every frame; the result is the same.
    try:
        from sam2 import _C  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False


def _compile_kwargs(option: Union[None, bool, Mapping[str, Any]], device: torch.device) -> Optional[Dict[str, Any]]:
    """``torch.compile`` arguments for ``compile_image_encoder``: None / False
    = off; True = as SAM2's ``vos_optimized`` predictor compiles its image
    encoder (whole graph, static shapes; "max-autotune" on a GPU, the default
    mode on a CPU, where compiling gave no gain: BENCHMARKS.md); a mapping =
    those arguments (e.g. another backend)."""
    if option is None or option is False:
        return None
    if option is True:
        return {"fullgraph": True, "dynamic": False, **({"mode": "max-autotune"} if device.type == "cuda" else {})}
    if not isinstance(option, Mapping):
        raise ConfigError(f"compile_image_encoder must be True, False or torch.compile arguments, got {option!r}")
    return dict(option)


class _Prefetcher:
    """Reads and preprocesses frames on one background thread, ahead of the
    model (SAM2 preloads the whole video in ``init_state``; we read one frame
    ahead so reading overlaps compute while memory stays flat). All reads of
    a propagation go through this one thread, in order, so frame sources
    that are not thread-safe (a video decoder) are never read concurrently.
    At most two frames are held: the one being consumed and the next."""

    def __init__(self, load: Callable[[int], torch.Tensor]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._load = load
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="surgseg-sam2-prefetch")
        self._pending: Dict[int, Any] = {}  # frame index -> Future

    def ahead(self, frame_idx: int) -> None:
        if frame_idx not in self._pending:
            self._pending[frame_idx] = self._pool.submit(self._load, frame_idx)

    def take(self, frame_idx: int) -> torch.Tensor:
        """The frame (waiting for it); reads it now (on the reader thread) if
        it was not asked for ahead."""
        future = self._pending.pop(frame_idx, None)
        if future is None:
            future = self._pool.submit(self._load, frame_idx)
        return future.result()

    def close(self) -> None:
        """Drop frames read ahead that were not used (cancel, error) and stop
        the thread; waits at most for the one read in progress."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class StreamingSAM2:
    """SAM2 video object segmentation over any frame source, in bounded memory.

    ``frames``: anything with ``len()`` and integer indexing giving (H, W, 3)
    uint8 frames (our lazy video reader, a numpy array, a tifffile memmap).

    Options:
      ``max_cond_frames_in_attn``: SAM2's limit on prompted frames seen by
        memory attention (temporally closest before/after); None keeps the
        model's value.
      ``keep_recent_prompt_frames``: F2PASeg prompt partitioning: only the N
        latest prompted frames at or before the current frame (forward).
        None: the model's default (``model.surgseg_keep_recent_prompt_frames``,
        set by variants such as "f2paseg"; else off); 0: off.
      ``correct_as_cond`` / ``clear_memory_around_corrections``: SAM2's
        ``add_all_frames_to_correct_as_cond`` / ``clear_non_cond_mem_around_input``
        (on by default: without them a correction does not steer later frames).
      ``precision``: "auto" (default), "bf16", "bf16-encoder", "fp32-fast"
        or "fp32" (``device.resolve_inference_precision``: on a CPU with
        native bf16, auto runs a model at >= 512 px in bf16, other CPU runs
        in "fp32-fast", float32 with exact reorderings, see
        ``heads.reordered_float32``; on a CUDA GPU bf16
        throughout). ``use_autocast`` True / False is the
        older spelling of "bf16" / "fp32". Equal to SAM2VideoPredictor bit
        for bit only in "fp32" (SAM2's CPU path); the provenance says which ran.
      ``embed_cache_mb``: image-feature cache size (frames the user prompts or
        clicks on; propagation itself keeps only the frame it is on).
      ``prompt_hook``: a callable that may replace a frame's click/box points
        before SAM2 encodes them: ``hook(frame_idx, point_coords (B, P, 2)
        in model pixels, point_labels (B, P), frame_features) -> (coords,
        labels)`` (RP-SAM2's point refinement plugs in here). Runs for
        ``add_points`` (on all points of that frame and object) and
        ``predict_frame``; changed points are recorded in the provenance.
      ``fast_clicks``: the first clicks / box on a frame (no earlier mask
        there) go through ``fast_heads`` (SAM2's heads with per-frame cached
        image work, logits equal up to float rounding, not bit for bit):
        for previews (``ClickSession``); off by default, so tracking stays
        SAM2's arithmetic.
      ``cpu_attention``: in bf16 on a CPU, SAM2's attention calls as bf16
        matmuls (``cpu_attention``) instead of PyTorch's flash kernel. None
        (default): for models at >= ``cpu_attention.MIN_IMAGE_SIZE`` px,
        where it pays; True / False: always / never.
      ``compile_image_encoder``: True runs the image encoder through
        ``torch.compile`` as SAM2's ``vos_optimized`` predictor does (for
        GPUs: minutes to compile once per process and shape, then faster
        frames); a mapping gives torch.compile's arguments. Off by default.
    Points and boxes are in video pixel coordinates (x, y).

    Exactly SAM2 (tested against ``SAM2VideoPredictor``) except where bounded
    memory forbids it: a correction on, or a propagation started from, a
    frame farther than ``policy.window`` (15 for SAM2.1) frames from both the
    last propagated frame and every prompted frame sees only the memories
    still held (prompted frames and the window around them); SAM2 would also
    read the dropped memories of that frame's neighbours.
    """

    def __init__(
        self,
        model,
        frames: Any = None,
        *,
        image_size: Optional[int] = None,
        max_cond_frames_in_attn: Optional[int] = None,
        keep_recent_prompt_frames: Optional[int] = None,
        embed_cache_mb: float = 256.0,
        device: Optional[Union[str, torch.device]] = None,
        use_autocast: Optional[bool] = None,
        precision: Optional[str] = None,
        correct_as_cond: bool = True,
        clear_memory_around_corrections: bool = True,
        prompt_hook: Optional[PromptHook] = None,
        fast_clicks: bool = False,
        cpu_attention: Optional[bool] = None,
        compile_image_encoder: Union[None, bool, Mapping[str, Any]] = None,
    ) -> None:
        self.model = model
        if device is not None:
            self.model.to(torch.device(device))
        self.device = next(model.parameters()).device
        enable_fast_math(self.device)
        if image_size is not None and int(image_size) != int(model.image_size):
            raise ConfigError(
                f"the model processes {model.image_size} px images, not {image_size}: build it with "
                f"build_model(..., image_size={image_size}) to change the processing resolution"
            )
        if max_cond_frames_in_attn is not None and max_cond_frames_in_attn != -1 and max_cond_frames_in_attn < 2:
            raise ConfigError(f"max_cond_frames_in_attn must be -1 (no limit) or >= 2, got {max_cond_frames_in_attn}")
        if keep_recent_prompt_frames is None:
            keep_recent_prompt_frames = getattr(model, "surgseg_keep_recent_prompt_frames", None)
        if keep_recent_prompt_frames is not None and keep_recent_prompt_frames < 0:
            raise ConfigError(f"keep_recent_prompt_frames must be >= 0 (0: off), got {keep_recent_prompt_frames}")
        keep_recent_prompt_frames = keep_recent_prompt_frames or None  # 0: off
        if precision is not None and use_autocast is not None:
            raise ConfigError("give precision or use_autocast (its older True/False form), not both")
        self.image_size = int(model.image_size)
        self.precision = resolve_inference_precision(
            precision if precision is not None else use_autocast, self.device, self.image_size
        )
        self.max_cond_frames_in_attn = max_cond_frames_in_attn
        self.keep_recent_prompt_frames = keep_recent_prompt_frames
        self.correct_as_cond = correct_as_cond
        self.clear_memory_around_corrections = clear_memory_around_corrections
        self.prompt_hook = prompt_hook
        self.fast_clicks = bool(fast_clicks)
        self.cpu_attention = (self.image_size >= cpu_attention_module.MIN_IMAGE_SIZE if cpu_attention is None
                              else bool(cpu_attention))
        self._compile_kwargs = _compile_kwargs(compile_image_encoder, self.device)
        self._compiled_encoder: Optional[Callable] = None  # made at the first encode (torch.compile is lazy anyway)
        # inside propagate() on the bf16 CPU path: linear weights packed once for the whole propagation
        self._linears: Optional[PackedLinears] = None
        self.cache = EmbeddingCache(embed_cache_mb)
        self._fill_holes = int(getattr(model, "fill_hole_area", 0) or 0) > 0 and _has_hole_filling()
        self._pos_enc: Optional[List[torch.Tensor]] = None  # same for every frame
        self._streaming = False  # inside propagate(): see _backbone
        self._prefetch: Optional[_Prefetcher] = None  # inside propagate(): next frame read ahead
        self._current: Optional[Tuple[int, List[torch.Tensor]]] = None
        self._maskmem_pos_enc: Optional[List[torch.Tensor]] = None
        self.frames = None
        # one operation at a time: a click sent from the GUI while a worker
        # propagates waits for the propagation (or its cancellation)
        self._lock = threading.RLock()
        if frames is not None:
            self.set_video(frames)

    # ------------------------------------------------------------------ video
    @_locked
    def set_video(self, frames: Any) -> None:
        """Start on a new frame source (drops all prompts and memory)."""
        if not hasattr(frames, "__len__") or not hasattr(frames, "__getitem__"):
            raise VideoError(f"frame source {type(frames).__name__} must support len() and frames[i]")
        n = len(frames)
        if n == 0:
            raise VideoError(f"frame source {type(frames).__name__} has no frames")
        first = np.asarray(frames[0])
        if first.ndim not in (2, 3):
            raise VideoError(f"frame source {type(frames).__name__}: frame 0 has shape {first.shape}, expected (H, W, 3)")
        self.frames = frames
        self.num_frames = n
        self.video_height, self.video_width = int(first.shape[0]), int(first.shape[1])
        self.cache.clear()
        self.objects: Dict[int, ObjectMemory] = {}
        self.prompt_log: List[Dict[str, Any]] = []
        self.policy = MemoryPolicy(
            num_maskmem=self.model.num_maskmem,
            stride=self.model.memory_temporal_stride_for_eval,
            max_obj_ptrs=self.model.max_obj_ptrs_in_encoder,
            num_frames=n,
            keep_recent_prompt_frames=self.keep_recent_prompt_frames,
        )
        self._head: Optional[int] = None

    @_locked
    def reset(self) -> None:
        """Forget all objects and prompts; keep the video and its feature cache."""
        self._require_video()
        self.objects = {}
        self.prompt_log = []
        self._head = None

    @property
    def obj_ids(self) -> List[int]:
        return list(self.objects)

    def _require_video(self) -> None:
        if self.frames is None:
            raise VideoError("no video set: call set_video(frames) first")

    def _check_frame(self, frame_idx: int) -> int:
        self._require_video()
        if not isinstance(frame_idx, (int, np.integer)) or not 0 <= frame_idx < self.num_frames:
            raise ConfigError(f"frame index {frame_idx!r} is outside the video (0..{self.num_frames - 1})")
        return int(frame_idx)

    def _object(self, obj_id: int, create: bool = True) -> ObjectMemory:
        if not isinstance(obj_id, (int, np.integer)) or isinstance(obj_id, bool) or obj_id < 1:
            raise ConfigError(f"object id must be an integer >= 1 (it becomes the label value), got {obj_id!r}")
        obj_id = int(obj_id)
        if obj_id not in self.objects:
            if not create:
                raise ConfigError(f"unknown object id {obj_id}; known: {self.obj_ids}")
            self.objects[obj_id] = ObjectMemory(obj_id=obj_id, num_frames=self.num_frames)
        return self.objects[obj_id]

    # -------------------------------------------------------------- features
    def _load_frame(self, frame_idx: int) -> torch.Tensor:
        """Read + preprocess one frame on the CPU (also run by the prefetcher)."""
        try:
            frame = self.frames[frame_idx]
        except Exception as exc:
            raise VideoError(f"cannot read frame {frame_idx} of {type(self.frames).__name__}: {exc}") from exc
        return preprocess_frame(frame, self.image_size)

    def _read_frame(self, frame_idx: int) -> torch.Tensor:
        pre = self._prefetch.take(frame_idx) if self._prefetch is not None else None
        image = pre if pre is not None else self._load_frame(frame_idx)
        return image.to(self.device).unsqueeze(0)

    def _backbone(self, frame_idx: int) -> List[torch.Tensor]:
        feats = self.cache.get(frame_idx)
        if feats is None and self._current is not None and self._current[0] == frame_idx:
            feats = self._current[1]
        if feats is None:
            with _autocast(self.device, self.precision.encoder or torch.float32), \
                    reordered_float32(self.precision.reordered), self._attention(self.precision.encoder):
                encoded = encode_frames(self.model, self._read_frame(frame_idx),
                                        image_encoder_forward=self._image_encoder_forward())
            feats = encoded.backbone_fpn
            if self.precision.heads is None and self.precision.encoder is not None:
                # bf16 encoder, float32 heads: the heads' float32 weights need float32 inputs
                feats = [f.float() for f in feats]
                encoded = encoded._replace(vision_pos_enc=[p.float() for p in encoded.vision_pos_enc])
            if self._pos_enc is None:
                self._pos_enc = encoded.vision_pos_enc
            if self._streaming:
                # propagation visits each frame once: keep only the current
                # frame instead of flushing the frames the user clicks on
                self._current = (frame_idx, feats)
            else:
                self.cache.put(frame_idx, feats)
        return feats

    def _image_encoder_forward(self) -> Optional[Callable]:
        """The compiled image encoder (``compile_image_encoder``), else None."""
        if self._compile_kwargs is not None and self._compiled_encoder is None:
            encoder = self.model.image_encoder
            # the class's forward bound to this encoder, not an attribute someone set on the instance
            self._compiled_encoder = torch.compile(type(encoder).forward.__get__(encoder), **self._compile_kwargs)
        return self._compiled_encoder

    def _features(self, frame_idx: int) -> FrameFeatures:
        feats = self._backbone(frame_idx)
        return FrameFeatures(feats, self._pos_enc)

    def _vision(self, frame_idx: int, batch: int):
        """Flattened features for ``batch`` objects, as SAM2's ``_get_image_feature``."""
        return flat_features(self.model, self._features(frame_idx), batch)

    @_locked
    def frame_features(self, frame_idx: int) -> FrameFeatures:
        """A frame's image features (batch 1), encoded once and cached: the
        input of ``heads.decode_masks`` and of prompt hooks. Computed in
        inference mode (not for training; see ``heads.encode_frames``)."""
        frame_idx = self._check_frame(frame_idx)
        with self._ctx():
            return self._features(frame_idx)

    @_locked
    def encode_frame(self, frame_idx: int) -> None:
        """Compute and cache a frame's image features (e.g. ahead of clicks)."""
        self.frame_features(frame_idx)

    def _apply_prompt_hook(self, frame_idx: int, point_inputs: Optional[dict]) -> Optional[dict]:
        """``point_inputs`` after the prompt hook (unchanged without one)."""
        if self.prompt_hook is None or point_inputs is None:
            return point_inputs
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        with self._ctx():
            new_coords, new_labels = self.prompt_hook(frame_idx, coords, labels, self._features(frame_idx))
        new_coords = torch.as_tensor(new_coords, dtype=torch.float32, device=self.device)
        new_labels = torch.as_tensor(new_labels, dtype=torch.int32, device=self.device)
        if new_coords.ndim != 3 or new_coords.shape[0] != coords.shape[0] or new_coords.shape[-1] != 2 \
                or new_labels.shape != new_coords.shape[:2]:
            raise ConfigError(
                f"prompt hook returned points {tuple(new_coords.shape)} / labels {tuple(new_labels.shape)}; "
                f"expected ({coords.shape[0]}, P, 2) / ({coords.shape[0]}, P)"
            )
        return {"point_coords": new_coords, "point_labels": new_labels}

    def _video_points(self, coords: torch.Tensor) -> List[List[float]]:
        scale = np.array([self.video_width / self.image_size, self.video_height / self.image_size], np.float32)
        return (coords[0].float().cpu().numpy() * scale).tolist()

    @contextlib.contextmanager
    def _ctx(self) -> Iterator[None]:
        with self._lock:
            old = self.model.max_cond_frames_in_attn
            if self.max_cond_frames_in_attn is not None:
                self.model.max_cond_frames_in_attn = self.max_cond_frames_in_attn
            try:
                with _grad_off(self.precision), _autocast(self.device, self.precision.heads or torch.float32), \
                        reordered_float32(self.precision.reordered):
                    yield
            finally:
                self.model.max_cond_frames_in_attn = old

    def _uses_cpu_attention(self, dtype: Optional[torch.dtype]) -> bool:
        return self.cpu_attention and self.device.type == "cpu" and dtype == torch.bfloat16

    @contextlib.contextmanager
    def _attention(self, dtype: Optional[torch.dtype], memory: bool = False) -> Iterator[None]:
        """bf16 on a CPU: SAM2's attention calls as bf16 matmuls
        (``cpu_attention``: 1.5-2x the flash kernel's speed), for the image
        encoder and propagation steps; during a propagation also its linear
        layers with weights packed once (``onednn_linear``). ``memory``: the
        memory attention's value projections after the attention
        (``cpu_attention.values_after_attention``). Float32 ("fp32-fast"
        too) runs SAM2's attention: there PyTorch's flash kernel beat both
        (SAM2.1-tiny's memory cross-attention at 512 px: 47.8 ms, values after
        the attention 55.3 ms in blocks, 64.2 ms through the flash kernel)."""
        if not self._uses_cpu_attention(dtype):
            yield
            return
        with cpu_attention_module.bf16_attention(linears=self._linears), \
                (cpu_attention_module.values_after_attention(self.model.memory_attention) if memory
                 else contextlib.nullcontext()):
            yield

    # ------------------------------------------------------------- one step
    def _compact(self, out: dict) -> dict:
        """Keep what later frames read, like SAM2 (memory features in bf16)."""
        mem = out["maskmem_features"]
        pred = out["pred_masks"]
        if self._fill_holes:
            from sam2.utils.misc import fill_holes_in_mask_scores

            pred = fill_holes_in_mask_scores(pred, self.model.fill_hole_area)
        return {
            "maskmem_features": None if mem is None else mem.to(torch.bfloat16),
            "maskmem_pos_enc": self._shared_pos_enc(out["maskmem_pos_enc"]),
            "pred_masks": pred,
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _shared_pos_enc(self, pos: Optional[List[torch.Tensor]]):
        if pos is None:
            return None
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [x[0:1].clone() for x in pos]
        return self._maskmem_pos_enc

    @staticmethod
    def _merge(outs: Sequence[dict]) -> dict:
        """Stack per-object memories along the batch dimension.

        Memories are stored in bf16 like SAM2 but handed over in float32:
        SAM2 concatenates them with float32 object pointers, which promotes
        them to float32 anyway, except when a frame has no pointer, where
        SAM2 without autocast (CPU) fails on a dtype mismatch."""
        batch = len(outs)
        return {
            "maskmem_features": torch.cat([o["maskmem_features"].float() for o in outs], 0),
            "maskmem_pos_enc": [x.expand(batch, -1, -1, -1) for x in outs[0]["maskmem_pos_enc"]],
            "obj_ptr": torch.cat([o["obj_ptr"] for o in outs], 0),
        }

    def _split(self, out: dict, i: int) -> dict:
        return {
            "maskmem_features": None if out["maskmem_features"] is None else out["maskmem_features"][i : i + 1].clone(),
            "maskmem_pos_enc": out["maskmem_pos_enc"],
            "pred_masks": out["pred_masks"][i : i + 1].clone(),
            "obj_ptr": out["obj_ptr"][i : i + 1].clone(),
            "object_score_logits": out["object_score_logits"][i : i + 1].clone(),
        }

    def _track(
        self,
        frame_idx: int,
        mems: Sequence[ObjectMemory],
        *,
        is_init_cond_frame: bool,
        reverse: bool,
        run_mem_encoder: bool,
        point_inputs: Optional[dict] = None,
        mask_inputs: Optional[torch.Tensor] = None,
        prev_sam_mask_logits: Optional[torch.Tensor] = None,
        views: Optional[List[Tuple[dict, dict]]] = None,
    ) -> List[dict]:
        """One ``track_step`` for objects that share the same memory layout."""
        batch = len(mems)
        vision_feats, vision_pos, feat_sizes = self._vision(frame_idx, batch)
        if is_init_cond_frame:
            output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        else:
            views = views or [self.policy.view(m, frame_idx, reverse) for m in mems]
            cond_keys, non_keys = sorted(views[0][0]), sorted(views[0][1])
            output_dict = {
                "cond_frame_outputs": {t: self._merge([v[0][t] for v in views]) for t in cond_keys},
                "non_cond_frame_outputs": {t: self._merge([v[1][t] for v in views]) for t in non_keys},
            }
        out = self.model.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=self.num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        compact = self._compact(out)
        return [self._split(compact, i) for i in range(batch)] if batch > 1 else [compact]

    def _encode_memory(self, frame_idx: int, out: dict) -> None:
        """SAM2's preflight: memory for an output made from user prompts."""
        vision_feats, _, feat_sizes = self._vision(frame_idx, 1)
        high_res = F.interpolate(
            out["pred_masks"].to(self.device), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        feats, pos = self.model._encode_new_memory(
            current_vision_feats=vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,
        )
        out["maskmem_features"] = feats.to(torch.bfloat16)
        out["maskmem_pos_enc"] = self._shared_pos_enc(pos)

    # --------------------------------------------------------------- prompts
    @_locked
    def add_points(
        self,
        frame_idx: int,
        obj_id: int,
        points: Optional[Sequence[Sequence[float]]] = None,
        labels: Optional[Sequence[int]] = None,
        *,
        box: Optional[Sequence[float]] = None,
        clear_old: bool = True,
    ) -> FrameResult:
        """Positive (1) / negative (0) clicks and/or a box (x0, y0, x1, y1) on
        a frame. Returns all objects' masks on that frame. On a frame already
        propagated this is a correction (see class doc)."""
        frame_idx = self._check_frame(frame_idx)
        if points is None and box is None:
            raise ConfigError("give at least one point or a box")
        pts, lbl = parse_prompt(points, labels, box)
        if len(pts) == 0:
            raise ConfigError("give at least one point or a box")
        if box is not None and not clear_old:
            raise ConfigError("a box must come before any click: use clear_old=True")
        self._check_inside(pts, lbl, box)
        mem = self._object(obj_id)
        scale = np.array([self.image_size / self.video_width, self.image_size / self.video_height], np.float32)
        new = {
            "point_coords": torch.from_numpy(pts * scale)[None].to(self.device),
            "point_labels": torch.from_numpy(lbl)[None].to(self.device),
        }
        old = None if clear_old else mem.point_inputs.get(frame_idx)
        if old is not None:
            new = {k: torch.cat([old[k], new[k]], dim=1) for k in new}
        mem.point_inputs[frame_idx] = new
        mem.mask_inputs.pop(frame_idx, None)
        entry = {"frame": frame_idx, "object": int(obj_id), "points": pts.tolist(), "labels": lbl.tolist(),
                 "clear_old": clear_old}
        self.prompt_log.append(entry)
        hooked = self._apply_prompt_hook(frame_idx, new)
        if hooked is not new:
            entry["points_after_hook"] = self._video_points(hooked["point_coords"])
            entry["labels_after_hook"] = hooked["point_labels"][0].cpu().tolist()
        return self._run_prompt(frame_idx, mem, point_inputs=hooked)

    def _check_inside(self, pts: np.ndarray, lbl: np.ndarray, box) -> None:
        """Clicks must lie on the frame and a box must overlap it: SAM2 would
        "segment" anything outside, a silently wrong result."""
        w, h = float(self.video_width), float(self.video_height)
        clicks = pts[lbl < 2]
        outside = clicks[(clicks[:, 0] < 0) | (clicks[:, 0] > w) | (clicks[:, 1] < 0) | (clicks[:, 1] > h)]
        if len(outside):
            x, y = outside[0].tolist()
            raise ConfigError(f"click ({x:g}, {y:g}) lies outside the {w:g}x{h:g} frame (x 0..{w:g}, y 0..{h:g})")
        if box is not None:
            x0, y0, x1, y1 = np.asarray(box, np.float32).reshape(-1).tolist()
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise ConfigError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies entirely outside the {w:g}x{h:g} frame")

    def add_box(self, frame_idx: int, obj_id: int, box: Sequence[float]) -> FrameResult:
        return self.add_points(frame_idx, obj_id, box=box)

    @_locked
    def add_mask(self, frame_idx: int, obj_id: int, mask: np.ndarray) -> FrameResult:
        """A mask (H, W) at video resolution as the prompt (or correction)."""
        frame_idx = self._check_frame(frame_idx)
        mem = self._object(obj_id)
        m = np.asarray(mask)
        if m.shape != (self.video_height, self.video_width):
            raise ConfigError(f"mask shape {m.shape} does not match the video frames {(self.video_height, self.video_width)}")
        t = torch.from_numpy(m.astype(bool))[None, None].float().to(self.device)
        if t.shape[-2:] != (self.image_size, self.image_size):
            t = F.interpolate(t, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
            t = (t >= 0.5).float()
        mem.mask_inputs[frame_idx] = t
        mem.point_inputs.pop(frame_idx, None)
        self.prompt_log.append({"frame": frame_idx, "object": int(obj_id), "mask_pixels": int(m.astype(bool).sum())})
        return self._run_prompt(frame_idx, mem, mask_inputs=t)

    def _run_prompt(self, frame_idx: int, mem: ObjectMemory, *, point_inputs=None, mask_inputs=None) -> FrameResult:
        tracked = mem.tracked[frame_idx]
        is_init = tracked == UNTRACKED
        reverse = bool(tracked == BACKWARD)
        is_cond = is_init or self.correct_as_cond
        prev_logits = None
        if point_inputs is not None:
            prev = mem.pending.get(frame_idx)
            prev_out = prev[0] if prev is not None and prev[1] == is_cond else None
            if prev_out is None:
                prev_out = mem.cond.get(frame_idx) or mem.non_cond.get(frame_idx)
            if prev_out is not None and prev_out["pred_masks"] is not None:
                prev_logits = torch.clamp(prev_out["pred_masks"].to(self.device), -32.0, 32.0)
        with self._ctx():
            if self.fast_clicks and is_init and point_inputs is not None and prev_logits is None:
                mm = bool(self.model._use_multimask(True, point_inputs))
                head = decode_masks(self.model, self._features(frame_idx), point_coords=point_inputs["point_coords"],
                                    point_labels=point_inputs["point_labels"], multimask_output=mm)
                out = self._compact({"maskmem_features": None, "maskmem_pos_enc": None, "pred_masks": head.best_masks,
                                     "obj_ptr": head.obj_ptr, "object_score_logits": head.object_score_logits})
                mem.pending[frame_idx] = (out, is_cond)
                return self.frame_result(frame_idx)
            (out,) = self._track(
                frame_idx,
                [mem],
                is_init_cond_frame=is_init,
                reverse=reverse,
                run_mem_encoder=False,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                prev_sam_mask_logits=prev_logits,
            )
            mem.pending[frame_idx] = (out, is_cond)
            return self.frame_result(frame_idx)

    @_locked
    def clear_prompts(self, frame_idx: int, obj_id: int) -> None:
        """Remove an object's prompts on a frame (the frame stops being a
        prompted frame, as SAM2's ``clear_all_prompts_in_frame``)."""
        frame_idx = self._check_frame(frame_idx)
        mem = self._object(obj_id, create=False)
        mem.point_inputs.pop(frame_idx, None)
        mem.mask_inputs.pop(frame_idx, None)
        mem.pending.pop(frame_idx, None)
        out = mem.cond.pop(frame_idx, None)
        if out is not None:
            mem.non_cond[frame_idx] = out
            mem.tracked[frame_idx] = UNTRACKED

    @_locked
    def remove_object(self, obj_id: int) -> None:
        self._object(obj_id, create=False)
        del self.objects[int(obj_id)]

    @_locked
    def frame_result(self, frame_idx: int) -> FrameResult:
        """Current masks of all objects on a frame (NO_OBJ_SCORE where an
        object has no output there any more)."""
        ids = self.obj_ids
        low = torch.full((len(ids), 1, self.image_size // 4, self.image_size // 4), NO_OBJ_SCORE, device=self.device)
        scores = np.full(len(ids), NO_OBJ_SCORE, np.float32)
        for i, obj_id in enumerate(ids):
            out = self.objects[obj_id].output_at(frame_idx)
            if out is not None:
                low[i : i + 1] = out["pred_masks"].to(self.device)
                scores[i] = float(out["object_score_logits"].float().reshape(-1)[0])
        return self._to_result(frame_idx, ids, low, scores)

    def _to_result(self, frame_idx: int, ids: List[int], low: torch.Tensor, scores: np.ndarray) -> FrameResult:
        video_res = F.interpolate(
            low.float(), size=(self.video_height, self.video_width), mode="bilinear", align_corners=False
        )
        return FrameResult(frame_idx=frame_idx, obj_ids=list(ids), logits=video_res[:, 0].float().cpu(), object_scores=scores)

    # ------------------------------------------------------- single frame (SAM)
    @_locked
    def predict_frame(
        self,
        frame_idx: int,
        points: Optional[Sequence[Sequence[float]]] = None,
        labels: Optional[Sequence[int]] = None,
        *,
        box: Optional[Sequence[float]] = None,
        mask: Optional[np.ndarray] = None,
        multimask_output: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Segment one frame from prompts without touching the video state
        (interactive use: the image encoder runs once per frame, cached).
        Returns (masks (M, H, W) bool, predicted IoUs (M,), logits (M, H, W))."""
        frame_idx = self._check_frame(frame_idx)
        pts, lbl = parse_prompt(points, labels, box)
        if len(pts) == 0 and mask is None:
            raise ConfigError("give points, a box or a mask")
        scale = np.array([self.image_size / self.video_width, self.image_size / self.video_height], np.float32)
        point_inputs = None
        if len(pts):
            point_inputs = {
                "point_coords": torch.from_numpy(pts * scale)[None].to(self.device),
                "point_labels": torch.from_numpy(lbl)[None].to(self.device),
            }
        point_inputs = self._apply_prompt_hook(frame_idx, point_inputs)
        with self._ctx():
            mask_in = None
            if mask is not None:
                m = np.asarray(mask, np.float32)
                if m.shape != (self.video_height, self.video_width):
                    raise ConfigError(f"mask shape {m.shape} does not match the video frames "
                                      f"{(self.video_height, self.video_width)}")
                mask_in = torch.from_numpy(m)[None, None].to(self.device)
                mask_in = F.interpolate(mask_in, size=self.model.sam_prompt_encoder.mask_input_size, mode="bilinear")
                mask_in = mask_in * 20.0 - 10.0  # binary mask as logits
            out = decode_masks(
                self.model,
                self._features(frame_idx),
                point_coords=None if point_inputs is None else point_inputs["point_coords"],
                point_labels=None if point_inputs is None else point_inputs["point_labels"],
                mask_inputs=mask_in,
                multimask_output=multimask_output,
            )
            low = out.masks if multimask_output else out.best_masks
            logits = F.interpolate(low.float(), size=(self.video_height, self.video_width), mode="bilinear", align_corners=False)
        logits = logits[0].cpu()
        return (logits > 0).numpy(), out.ious[0].float().cpu().numpy(), logits

    # ------------------------------------------------------------ propagation
    def _preflight(self) -> None:
        if not self.objects:
            raise ConfigError("no prompts yet: add points, a box or a mask for at least one object")
        for mem in self.objects.values():
            # SAM2's order: non-conditioning outputs first, then conditioning ones
            pending = sorted(mem.pending.items(), key=lambda kv: (kv[1][1], kv[0]))
            for frame_idx, (out, is_cond) in pending:
                if out["maskmem_features"] is None:
                    self._encode_memory(frame_idx, out)
                (mem.cond if is_cond else mem.non_cond)[frame_idx] = out
                if self.clear_memory_around_corrections:
                    self.policy.clear_around(mem, frame_idx)
            mem.pending.clear()
            if not mem.cond:
                raise ConfigError(f"object {mem.obj_id} has no prompted frame; add a prompt for it first")
            for frame_idx in mem.cond:
                mem.non_cond.pop(frame_idx, None)

    def _order(self, direction: str, start: Optional[int], first: int, last: int) -> List[Tuple[int, bool]]:
        prompted = sorted({t for m in self.objects.values() for t in m.cond})
        in_range = [t for t in prompted if first <= t <= last] or prompted
        if start is None:  # backward alone: from the latest prompt; else from the earliest
            start = max(in_range) if direction == "backward" else min(in_range)
        start = min(max(int(start), first), last)
        fwd = [(t, False) for t in range(start, last + 1)]
        bwd = [(t, True) for t in range(start, first - 1, -1)]
        if direction == "forward":
            return fwd
        if direction == "backward":
            return bwd
        if direction == "both":
            return fwd + bwd
        raise ConfigError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")

    @_locked
    def propagate(
        self,
        sink: Optional[Sink] = None,
        *,
        direction: str = "forward",
        start: Optional[int] = None,
        frame_range: Optional[Tuple[int, int]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> int:
        """Track all objects through the video, handing each frame's
        ``FrameResult`` to ``sink`` as soon as it exists.

        ``start``: first frame (default: the earliest prompted frame in the
        range; after a correction pass the corrected frame). ``frame_range``:
        inclusive (first, last). ``direction``: forward, backward or both
        (forward then backward from ``start``). Cancelling raises
        ``Cancelled`` after the last finished frame was written; the engine
        state stays valid and propagation can be resumed. Returns the number
        of frames emitted.
        """
        self._require_video()
        first, last = (0, self.num_frames - 1) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
        if not (0 <= first <= last < self.num_frames):
            raise ConfigError(f"frame range {frame_range} is outside the video (0..{self.num_frames - 1})")
        if start is None:
            pending = [t for m in self.objects.values() for t in m.pending if first <= t <= last]
            start = min(pending) if pending else None
        with self._ctx():
            self._preflight()
            order = self._order(direction, start, first, last)
            total = len(order)
            report(progress, 0, total, "propagating")
            reads = self._frames_to_read(order)
            self._streaming = True
            self._prefetch = _Prefetcher(self._load_frame)
            self._linears = PackedLinears() if self.cpu_attention and self.device.type == "cpu" else None
            try:
                for done, (frame_idx, reverse) in enumerate(order, 1):
                    check_cancel(cancel)
                    # read the next frame(s) while the model works on this one
                    for t in reads[done - 1 : done + 1]:
                        if t is not None:
                            self._prefetch.ahead(t)
                    result = self._step(frame_idx, reverse)
                    if sink is not None:
                        sink(result)
                    report(progress, done, total, f"frame {frame_idx}")
            finally:
                self._prefetch.close()
                self._prefetch = None
                self._linears = None
                self._end_streaming()
        return total

    def _frames_to_read(self, order: List[Tuple[int, bool]]) -> List[Optional[int]]:
        """Per step, the frame ``_backbone`` will have to read then (None: its
        features are cached, it is the previous step's frame, or it is a
        prompted frame of every object, where no model call runs). The cache
        and the prompted frames do not change during a propagation."""
        reads: List[Optional[int]] = []
        prev = self._current[0] if self._current is not None else None
        for frame_idx, _ in order:
            skip = (
                frame_idx in self.cache
                or frame_idx == prev
                or all(frame_idx in m.cond for m in self.objects.values())
            )
            reads.append(None if skip else frame_idx)
            if not skip:
                prev = frame_idx
        return reads

    def _end_streaming(self) -> None:
        # the frame where propagation stopped is where the user looks next
        self._streaming = False
        if self._current is not None:
            self.cache.put(*self._current)
            self._current = None

    def iter_propagate(self, *, direction: str = "forward", start: Optional[int] = None,
                       frame_range: Optional[Tuple[int, int]] = None) -> Iterator[FrameResult]:
        """Generator form of ``propagate`` (like SAM2's ``propagate_in_video``)."""
        self._require_video()
        first, last = (0, self.num_frames - 1) if frame_range is None else frame_range
        with self._ctx():
            self._preflight()
            order = self._order(direction, start, first, last)
        try:
            for frame_idx, reverse in order:
                with self._ctx():
                    self._streaming = True
                    try:
                        result = self._step(frame_idx, reverse)
                    finally:
                        self._streaming = False
                yield result
        finally:
            with self._lock:
                self._end_streaming()

    def _step(self, frame_idx: int, reverse: bool) -> FrameResult:
        # propagation only: a click's decoder attention is small and paid the mode's dispatch (~1 ms a click)
        with self._attention(self.precision.heads, memory=True):
            return self._track_step(frame_idx, reverse)

    def _track_step(self, frame_idx: int, reverse: bool) -> FrameResult:
        ids = self.obj_ids
        low: List[Optional[torch.Tensor]] = [None] * len(ids)
        groups: Dict[tuple, List[Tuple[int, ObjectMemory, tuple]]] = {}
        for i, obj_id in enumerate(ids):
            mem = self.objects[obj_id]
            if frame_idx in mem.cond:
                low[i] = mem.cond[frame_idx]["pred_masks"]
                if self.clear_memory_around_corrections:
                    self.policy.clear_around(mem, frame_idx)
            else:
                view = self.policy.view(mem, frame_idx, reverse)
                groups.setdefault((tuple(sorted(view[0])), tuple(sorted(view[1]))), []).append((i, mem, view))
        for members in groups.values():
            outs = self._track(
                frame_idx,
                [m for _, m, _ in members],
                is_init_cond_frame=False,
                reverse=reverse,
                run_mem_encoder=True,
                views=[v for _, _, v in members],
            )
            for (i, mem, _), out in zip(members, outs):
                mem.non_cond[frame_idx] = out
                low[i] = out["pred_masks"]
        scores = np.zeros(len(ids), np.float32)
        anchors = sorted({t for m in self.objects.values() for t in m.cond})
        for i, obj_id in enumerate(ids):
            mem = self.objects[obj_id]
            mem.tracked[frame_idx] = BACKWARD if reverse else FORWARD
            out = mem.output_at(frame_idx)
            scores[i] = float(out["object_score_logits"].float().reshape(-1)[0])
            self.policy.prune(mem, frame_idx, anchors)
        self._head = frame_idx
        stacked = torch.cat([x.to(self.device) for x in low], 0) if ids else torch.zeros(0, 1, 1, 1)
        return self._to_result(frame_idx, ids, stacked, scores)

    # ------------------------------------------------------------ inspection
    def memory_report(self) -> Dict[str, Any]:
        """What the bank holds (for tests, logs and the memory benchmark)."""
        objs = {}
        total = 0
        for obj_id, mem in self.objects.items():
            n_bytes = 0
            for out in list(mem.cond.values()) + list(mem.non_cond.values()):
                for key in ("maskmem_features", "pred_masks", "obj_ptr"):
                    t = out.get(key)
                    if t is not None:
                        n_bytes += t.numel() * t.element_size()
            total += n_bytes
            objs[obj_id] = {"cond": sorted(mem.cond), "non_cond": sorted(mem.non_cond), "bytes": n_bytes}
        return {"objects": objs, "memory_bytes": total, "cache_frames": self.cache.frames(), "cache_bytes": self.cache.nbytes}

    def provenance(self) -> Dict[str, Any]:
        return build_provenance(
            self.model,
            self.prompt_log,
            {
                "max_cond_frames_in_attn": self.max_cond_frames_in_attn
                if self.max_cond_frames_in_attn is not None
                else self.model.max_cond_frames_in_attn,
                "keep_recent_prompt_frames": self.keep_recent_prompt_frames,
                "correct_as_cond": self.correct_as_cond,
                "clear_memory_around_corrections": self.clear_memory_around_corrections,
                "num_frames": getattr(self, "num_frames", None),
                "video_size": [getattr(self, "video_height", None), getattr(self, "video_width", None)],
                "device": str(self.device),
                "precision": self.precision.name,
                # which attention arithmetic ran (bf16 matmuls instead of the flash kernel)
                "cpu_attention": any(self._uses_cpu_attention(d) for d in (self.precision.encoder, self.precision.heads)),
                "compiled_image_encoder": self._compile_kwargs is not None,
            },
        )
