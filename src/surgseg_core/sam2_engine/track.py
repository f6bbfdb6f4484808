"""Track objects through a video with SAM2 from click/box prompts: the one
code path behind ``surgseg track``, the "Track with SAM2" napari widget and
Python use.

    from surgseg_core.sam2_engine.track import track_video
    summary = track_video("clip.mp4", [{"frame": 0, "obj_id": 1, "box": [40, 30, 120, 90]}],
                          model="sam2.1_hiera_tiny", checkpoint="sam2.1_hiera_tiny", out_dir="masks/")
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import Cancelled, ConfigError, WeightsError, WriteError
from ..progress import CancelToken, ProgressCallback, check_cancel
from ..provenance import build_provenance as _build_provenance, source_fields
from .outputs import FrameResult, PngLabelWriter, Tee

if TYPE_CHECKING:
    from .session import ClickSession

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "no checkpoint given: SAM2 runs with RANDOMLY INITIALISED weights; the masks are not segmentations "
    "(use only for testing the pipeline)"
)

Prompt = Dict[str, Any]


# ------------------------------------------------------------------ prompts
def normalize_prompts(prompts: Sequence[Mapping[str, Any]], num_frames: Optional[int] = None) -> List[Prompt]:
    """Check prompts and merge those on the same (frame, object) into one.

    Each prompt: ``{"frame": int, "obj_id": int >= 1, "points": [[x, y], ...],
    "labels": [1 | 0, ...], "box": [x0, y0, x1, y1] | None}`` in video pixels.
    """
    if prompts is None or len(prompts) == 0:
        raise ConfigError("no prompts: give at least one point or box on some frame for one object")
    merged: Dict[Tuple[int, int], Prompt] = {}
    for i, p in enumerate(prompts):
        if not isinstance(p, Mapping):
            raise ConfigError(f"prompt {i}: expected a dict with frame, obj_id, points/labels and/or box, got {p!r}")
        where = f"prompt {i} (frame {p.get('frame')!r}, object {p.get('obj_id')!r})"
        try:
            frame = int(p["frame"])
            obj_id = int(p.get("obj_id", 1))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: 'frame' and 'obj_id' must be integers ({exc})") from exc
        if frame != float(p["frame"]) or frame < 0:
            raise ConfigError(f"{where}: frame must be a whole number >= 0")
        if num_frames is not None and frame >= num_frames:
            raise ConfigError(f"{where}: frame {frame} is outside the video (0..{num_frames - 1})")
        if obj_id < 1 or obj_id > 255:
            raise ConfigError(f"{where}: obj_id must be 1..255 (it becomes the label value)")
        pts = np.asarray(p.get("points") if p.get("points") is not None else [], float).reshape(-1, 2)
        lbl = np.asarray(p.get("labels") if p.get("labels") is not None else [1] * len(pts), int).reshape(-1)
        if len(pts) != len(lbl):
            raise ConfigError(f"{where}: {len(pts)} points but {len(lbl)} labels")
        if len(lbl) and not np.isin(lbl, (0, 1)).all():
            raise ConfigError(f"{where}: labels must be 1 (object) or 0 (background)")
        box = p.get("box")
        if box is not None:
            box = [float(v) for v in np.asarray(box, float).reshape(-1)]
            if len(box) != 4 or not (box[2] >= box[0] and box[3] >= box[1]):  # a line: see heads.parse_prompt
                raise ConfigError(f"{where}: box must be [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0, got {box}")
        if not len(pts) and box is None:
            raise ConfigError(f"{where}: has neither points nor a box")
        if not np.all(np.isfinite(pts)):
            raise ConfigError(f"{where}: point coordinates contain NaN or infinity")
        key = (frame, obj_id)
        if key not in merged:
            merged[key] = {"frame": frame, "obj_id": obj_id, "points": [], "labels": [], "box": None}
        m = merged[key]
        if box is not None:
            if m["box"] is not None:
                raise ConfigError(f"{where}: object {obj_id} already has a box on frame {frame} (one box per object and frame)")
            m["box"] = box
        m["points"] += pts.tolist()
        m["labels"] += lbl.tolist()
    return sorted(merged.values(), key=lambda m: (m["frame"], m["obj_id"]))


def prompts_from_points_table(points: Any, features: Optional[Mapping[str, Any]] = None) -> List[Prompt]:
    """napari-style points -> prompts (one per frame and object).

    ``points``: (N, 3) ``(t, y, x)`` array, or a ``PointsTable`` (what
    ``read_points_csv`` returns; its features are used). ``features``: per-
    point columns ``obj_id`` (default 1) and ``positive`` (default True;
    False/0 = background click), a mapping or a pandas DataFrame.
    """
    if hasattr(points, "data") and hasattr(points, "features") and features is None:
        points, features = points.data, points.features
    data = np.asarray(points, float)
    if data.size == 0:
        return []
    if data.ndim != 2 or data.shape[1] != 3:
        raise ConfigError(
            f"prompt points must be (N, 3) (frame, y, x) in a video (a 'frame' column in a CSV), got shape {data.shape}"
        )
    n = len(data)

    def column(name: str, default: Any) -> np.ndarray:
        if features is None or name not in features:
            return np.full(n, default)
        values = np.asarray(features[name])
        if len(values) != n:
            raise ConfigError(f"prompt feature '{name}' has {len(values)} values for {n} points")
        return values

    try:
        obj_ids = column("obj_id", 1).astype(float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"prompt feature 'obj_id' must be whole numbers ({exc})") from exc
    if not np.all(np.isfinite(obj_ids)) or not np.allclose(obj_ids, np.round(obj_ids)):
        raise ConfigError("prompt feature 'obj_id' must be whole numbers")
    positive = np.array([_truthy(v) for v in column("positive", True)], bool)
    if not np.allclose(data[:, 0], np.round(data[:, 0])):
        raise ConfigError("prompt points must lie on whole frames (the first coordinate is the frame index)")
    prompts = [
        {"frame": int(round(t)), "obj_id": int(round(o)), "points": [[float(x), float(y)]], "labels": [int(pos)], "box": None}
        for (t, y, x), o, pos in zip(data, obj_ids, positive)
    ]
    return normalize_prompts(prompts)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "pos", "positive"):
            return True
        if v in ("0", "false", "no", "neg", "negative"):
            return False
        raise ConfigError(f"prompt feature 'positive' must be true/false or 1/0, got {value!r}")
    return bool(value)


# ------------------------------------------------------------------ models
class ModelChoice(NamedTuple):
    """What a model name stands for: the SAM2 config, the weights (None:
    random init) and the registered model variant (None: plain SAM2)."""

    config: str
    checkpoint: Optional[str]
    variant: Optional[str] = None


def resolve_model_choice(model: str, checkpoint: Optional[Union[str, os.PathLike]] = None) -> ModelChoice:
    """(config, checkpoint, variant) from a config name/path, an official
    checkpoint name (its architecture; weights only with ``checkpoint``) or
    the name of registered fine-tuned weights (its config, variant and
    those weights: the registry records them, so the name alone builds the
    right model)."""
    from ..weights import OFFICIAL, get_entry
    from .build import config_path

    name = str(model)
    if name in OFFICIAL:
        return ModelChoice(name, None if checkpoint is None else str(checkpoint))
    try:
        config_path(name)
        return ModelChoice(name, None if checkpoint is None else str(checkpoint))
    except ConfigError:
        pass
    entry = get_entry(name)
    if entry is None:
        from .build import available_configs

        raise ConfigError(
            f"unknown SAM2 model {name!r}: give a config ({', '.join(available_configs())}), an official "
            f"checkpoint name ({', '.join(OFFICIAL)}) or registered weights (see 'surgseg weights list')"
        )
    variant = entry.variant
    if entry.method != "sam2" and variant is None:
        from .variants import available_variants

        if entry.method not in available_variants():
            raise WeightsError(f"registered weights {name!r} are for method {entry.method!r}, not SAM2 tracking")
        variant = entry.method  # a method that is a SAM2 variant (f2paseg): the trainer registers no variant
    config = entry.config or (OFFICIAL[entry.base].config if entry.base in OFFICIAL else None)
    if config is None:
        raise WeightsError(f"registered weights {name!r} record no SAM2 config (nor an official base); re-register them with one")
    return ModelChoice(config, str(checkpoint) if checkpoint is not None else entry.name, variant)


def load_tracking_model(model: str, checkpoint: Optional[Union[str, os.PathLike]] = None, *,
                        device: Optional[str] = None, image_size: Optional[int] = None, seed: int = 0):
    """The SAM2 model ``track_video`` builds for a model name (see there):
    callers that track several times (the widget's preview, then tracking)
    build it once and pass it in. Registered weights of a SAM2-based method
    (F2PASeg) that are a training checkpoint load through their method
    (:func:`_trained_sam`); SAM2 state dicts load with their variant."""
    from .build import build_model

    choice = resolve_model_choice(str(model), checkpoint)
    if choice.variant is not None and choice.checkpoint is not None:
        net = _trained_sam(choice.checkpoint, device=device, image_size=image_size)
        if net is not None:
            return net
    return build_model(choice.config, choice.checkpoint, variant=choice.variant, device=device,
                       image_size=image_size, seed=seed)


def _trained_sam(checkpoint: Union[str, os.PathLike], *, device: Optional[str] = None,
                 image_size: Optional[int] = None):
    """The SAM2 model inside a training checkpoint of a SAM2-based method
    (``{"method": "f2paseg", "model": {"sam.…": …}, "config": …}``), built by
    that method from the checkpoint's config (variant options, base weights
    under a trainable-only checkpoint); None for SAM2 weights under SAM2's own
    keys (``build_model`` loads those)."""
    from ..weights import get_entry, resolve_weights
    from ..weights.state_dict import read_checkpoint

    path = resolve_weights(checkpoint)
    ckpt = read_checkpoint(path, expected="SAM2 weights or a training checkpoint")
    method = ckpt.get("method")
    if not isinstance(ckpt.get("model"), dict) or not isinstance(method, str) or method == "sam2":
        return None
    from ..training.inference import load_trained_model

    del ckpt  # load_trained_model reads it again (with its checks)
    _, wrapper, _, _ = load_trained_model(method, path, {"image_size": image_size} if image_size else None, device)
    net = getattr(wrapper, "sam", None)
    if net is None:
        raise WeightsError(f"{path}: a {method!r} training checkpoint without a SAM2 model (.sam): not for tracking")
    entry = get_entry(str(checkpoint))
    net.surgseg_checkpoint = str(path)  # provenance: these weights, not the base the model was built from
    net.surgseg_checkpoint_sha256 = entry.sha256 if entry is not None else None
    net.surgseg_model_name = entry.name if entry is not None else path.stem
    return net.eval()


def resolve_net(model: Any, checkpoint: Optional[Union[str, os.PathLike]] = None, *, device: Optional[str] = None,
                image_size: Optional[int] = None, seed: int = 0):
    """(model, random_weights) from a model name (built here) or an already
    built model (e.g. the widget's cached one, moved to ``device``)."""
    if isinstance(model, (str, os.PathLike)):
        net = load_tracking_model(str(model), checkpoint, device=device, image_size=image_size, seed=seed)
    else:
        if checkpoint is not None:
            raise ConfigError("give either a built model or a checkpoint to load, not both")
        net = model
        if device is not None:
            from ..device import resolve_device

            net.to(resolve_device(device))
    return net, getattr(net, "surgseg_checkpoint", None) is None


def run_provenance(engine, random_weights: bool) -> dict:
    """The engine's provenance of a run, saying whether the weights were random."""
    prov = engine.provenance()
    prov["random_weights"] = random_weights
    if random_weights:
        prov["warning"] = RANDOM_WEIGHTS_WARNING
    return prov


def _open_frames(frames: Any):
    """A path is opened lazily (and closed by the caller); anything indexable is used as is."""
    if isinstance(frames, (str, os.PathLike)):
        from ..io import open_video

        src = open_video(frames)
        return src, src.close
    return frames, None


# ------------------------------------------------------------------ tracking
def track_video(
    frames: Any,
    prompts: Sequence[Mapping[str, Any]],
    *,
    model: Any = "surgseg_tiny",
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    image_size: Optional[int] = None,
    direction: str = "both",
    frame_range: Optional[Tuple[int, int]] = None,
    sink: Optional[Callable[[FrameResult], None]] = None,
    out_dir: Optional[Union[str, os.PathLike]] = None,
    per_object: bool = False,
    overwrite: bool = False,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    seed: int = 0,
    prompt_hook: Optional[Callable] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    compile_image_encoder: bool = False,
) -> Dict[str, Any]:
    """Segment and track the prompted objects through ``frames`` with SAM2.

    ``frames``: a video path (opened lazily) or anything indexable giving
    (H, W, 3) uint8 frames (a FrameSource, a numpy array). ``prompts``: see
    ``normalize_prompts`` (video pixel coordinates). ``model``: a config or
    official name (``surgseg_tiny``, ``sam2.1_hiera_tiny``), registered
    weights, or an already built model (``build_model``). ``checkpoint``:
    weights path or registered name; without one the weights are random and
    the result says so. ``frame_range``: inclusive (first, last).
    ``direction``: forward, backward or both from the earliest prompt.
    ``prompt_hook``: the engine's (e.g. RP-SAM2's click refinement).
    ``precision``: the engine's ("auto", "bf16", "bf16-encoder", "fp32-fast",
    "fp32"); ``compile_image_encoder``: the engine's (torch.compile, GPUs).
    Each frame's masks go to ``sink`` and, with ``out_dir``, to
    ``out_dir/000123.png`` label maps (``per_object``: ``obj_<id>/``) plus
    ``provenance.json``. Cancelling raises ``Cancelled`` after writing the
    provenance of the frames done (every written frame is complete).

    Returns ``{"frames_written", "obj_ids", "direction", "frame_range",
    "out_dir", "random_weights", "provenance"}``.
    """
    from .engine import StreamingSAM2

    check_cancel(cancel)
    source, close = _open_frames(frames)
    try:
        if not hasattr(source, "__len__") or len(source) == 0:
            raise ConfigError(f"no video frames to track ({type(source).__name__} is empty)")
        n = len(source)
        norm = normalize_prompts(prompts, n)
        if frame_range is not None:
            first, last = int(frame_range[0]), int(frame_range[1])
            if not 0 <= first <= last < n:
                raise ConfigError(f"frame range {first}..{last} is outside the video (0..{n - 1})")
            outside = sorted({p["frame"] for p in norm if not first <= p["frame"] <= last})
            if outside:
                raise ConfigError(f"prompts on frame(s) {outside} lie outside the frame range {first}..{last}")
            frame_range = (first, last)
        if direction not in ("forward", "backward", "both"):
            raise ConfigError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
        if out_dir is not None and not overwrite and PngLabelWriter.previous_outputs(Path(out_dir)):
            PngLabelWriter(out_dir)  # refuses, naming the folder, before the model is loaded

        net, random_weights = resolve_net(model, checkpoint, device=device, image_size=image_size, seed=seed)
        if random_weights:
            log.warning(RANDOM_WEIGHTS_WARNING)

        engine = StreamingSAM2(net, source, prompt_hook=prompt_hook, precision=precision,
                               compile_image_encoder=compile_image_encoder)
        for p in norm:
            check_cancel(cancel)
            engine.add_points(
                p["frame"], p["obj_id"],
                p["points"] or None, p["labels"] or None,
                box=p["box"],
            )
        writer = PngLabelWriter(out_dir, per_object=per_object, overwrite=overwrite) if out_dir is not None else None
        done: set = set()  # "both" visits the start frame twice

        def _count(result: FrameResult) -> None:
            done.add(result.frame_idx)

        options = {"direction": direction, "frame_range": list(frame_range) if frame_range else None}
        status = "failed"
        try:
            engine.propagate(Tee(writer, sink, _count), direction=direction, frame_range=frame_range,
                             progress=progress, cancel=cancel)
            status = "completed"
        except Cancelled:
            status = "cancelled"
            raise
        finally:
            prov = run_provenance(engine, random_weights)
            prov["tracking"] = {**options, "frames_written": len(done), "status": status}
            prov = _build_provenance(base=prov, result="masks", **source_fields(source, sorted(done)))
            if writer is not None and status == "completed":
                writer.write_provenance(prov)
            elif writer is not None:
                try:  # the error that stopped the run (a full disk) is what the user must see
                    writer.write_provenance(prov)
                except (OSError, WriteError) as exc:
                    log.warning("could not record the %s run's provenance in %s: %s", status, out_dir, exc)
        log.info("tracked %d object(s) over %d frame(s)%s", len(engine.obj_ids), len(done),
                 f" into {out_dir}" if out_dir is not None else "")
        return {
            "frames_written": len(done),
            "obj_ids": engine.obj_ids,
            "direction": direction,
            "frame_range": list(frame_range) if frame_range else [0, n - 1],
            "out_dir": str(Path(out_dir)) if out_dir is not None else None,
            "random_weights": random_weights,
            "provenance": prov,
        }
    finally:
        if close is not None:
            close()


# ------------------------------------------------------------------ clicks
def preview_frame(
    frames: Any,
    prompts: Sequence[Mapping[str, Any]],
    frame: int,
    *,
    model: Any,
    session: Optional["ClickSession"] = None,
    sink: Optional[Callable[[FrameResult], None]] = None,
    cancel: Optional[CancelToken] = None,
) -> Dict[str, Any]:
    """Segment one frame from its own prompts (no tracking): the widget's
    preview. ``model``: a built model (``load_tracking_model``);
    ``session``: a ``ClickSession`` kept by the caller, so later previews of
    an already encoded frame skip the image encoder (a new one is used when
    None). Returns the same summary as ``track_video`` (one frame)."""
    from .session import ClickSession

    session = session if session is not None else ClickSession()
    n = len(frames)
    norm = [p for p in normalize_prompts(prompts, n) if p["frame"] == int(frame)]
    if not norm:
        raise ConfigError(f"no prompts on frame {frame}")
    result = session.segment_frame(frames, model, int(frame), norm, cancel=cancel)
    if sink is not None:
        sink(result)
    engine = session.engine(frames, model)
    random_weights = getattr(model, "surgseg_checkpoint", None) is None
    prov = engine.provenance()
    prov["random_weights"] = random_weights
    if random_weights:
        prov["warning"] = RANDOM_WEIGHTS_WARNING
    prov["tracking"] = {"direction": "none", "frame_range": [int(frame), int(frame)], "frames_written": 1,
                        "status": "completed", "preview": True}
    prov = _build_provenance(base=prov, result="masks", **source_fields(frames, [int(frame)]))
    return {
        "frames_written": 1,
        "obj_ids": list(result.obj_ids),
        "direction": "none",
        "frame_range": [int(frame), int(frame)],
        "out_dir": None,
        "random_weights": random_weights,
        "provenance": prov,
    }
