"""Write synthetic clips and liver scenes to disk (layouts in FORMATS.md).

Frames are rendered, saved and encoded one at a time (never the whole clip in
memory); every file is written atomically. PNG bytes are deterministic (fixed
Pillow settings); the H.264 video is made reproducible with single-threaded
x264 and ffmpeg's bitexact flags (bit-identical with the same ffmpeg build).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import shlex
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

from ..atomic import atomic_path, atomic_write_bytes, atomic_write_text
from ..errors import ConfigError, DatasetError, VideoError
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from .endoscopy import (
    ACTIONS,
    ANATOMY_CLASSES,
    ANATOMY_LONG_NAMES,
    GENERATOR_VERSION,
    TOOL_TYPES,
    generate_endoscopy_clip,
)
from .liver import CURVE_NAMES, LIVER_CLASSES, generate_liver_scene

log = logging.getLogger(__name__)

GENERATOR_NAME = "surgseg_core.synth"
LANDMARK_COLUMNS = ("frame", "instrument_id", "active", "action", "tip_x", "tip_y", "anchor_x", "anchor_y")
# the tool landmark method's annotation format (methods/tools/annotations.py), active tool only
TOOL_ANNOTATION_COLUMNS = ("video", "frame", "tool_id", "tool_type", "action", "tip_x", "tip_y", "anchor_x",
                           "anchor_y")
VIDEO_CRF = 23
# Fixed encoder settings: one x264 thread (multi-threaded x264 is not
# deterministic), no timestamps/encoder strings in the container.
_X264_PARAMS = [
    "-preset", "medium", "-crf", str(VIDEO_CRF), "-threads", "1", "-g", "50",
    "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
]  # fmt: skip
_FRAME_NAME = re.compile(r"^\d{6}\.png$")


def frame_name(i: int) -> str:
    """File name of frame ``i`` in every per-frame folder: ``000000.png``."""
    return f"{int(i):06d}.png"


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG with fixed settings."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def ffmpeg_version() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_version())


class _VideoWriter:
    """H.264 yuv420p mp4 via imageio-ffmpeg, written to a temp file and renamed
    into place on :meth:`close` (atomic)."""

    def __init__(self, path: Path, height: int, width: int, fps: float) -> None:
        import imageio_ffmpeg

        if height % 2 or width % 2:
            raise ConfigError(f"video {path}: H.264 yuv420p needs even sizes, got {height}x{width}")
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        try:
            self._gen = imageio_ffmpeg.write_frames(
                str(tmp), (width, height), pix_fmt_in="rgb24", pix_fmt_out="yuv420p", fps=fps, quality=None,
                codec="libx264", macro_block_size=2, ffmpeg_log_level="error", output_params=list(_X264_PARAMS),
            )  # fmt: skip
            self._gen.send(None)
        except Exception as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise VideoError(f"cannot start the H.264 encoder for {path}: {exc}") from exc

    def write(self, rgb: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(rgb))

    def close(self, error: Optional[BaseException] = None) -> None:
        try:
            self._gen.close()
        except Exception as exc:  # encoder failed at the end
            error = error or exc
        if error is None:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(type(error), error, error.__traceback__)


def _check_even(what: str, height: int, width: int) -> None:
    # Checked before anything is written: yuv420p H.264 cannot hold odd sizes.
    if int(height) % 2 or int(width) % 2:
        raise ConfigError(f"{what}: H.264 yuv420p video needs even sizes, got {height}x{width}")


def _prepare_dir(out_dir: Path, kind: str, subdirs: Iterable[str]) -> None:
    """Create ``out_dir``; refuse to write into a non-empty folder that is
    not a synthetic dataset (so nothing the user made is overwritten)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "meta.json"
    if any(out_dir.iterdir()):
        try:
            meta = json.loads(meta_path.read_text())
            ours = meta.get("generator") == GENERATOR_NAME and meta.get("kind") == kind
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise DatasetError(
                f"{out_dir} is not empty and is not a synthetic {kind} folder (no matching meta.json); "
                "choose an empty or new folder"
            )
    for sub in subdirs:
        (out_dir / sub).mkdir(exist_ok=True)


def _remove_stale_frames(out_dir: Path, subdirs: Iterable[str], n_frames: int) -> None:
    # A previous, longer run of the same generator leaves frames past the new end.
    for sub in subdirs:
        for p in (out_dir / sub).iterdir():
            if _FRAME_NAME.match(p.name) and int(p.name[:6]) >= n_frames:
                p.unlink()


def _command(kind: str, out_dir: str, **opts) -> str:
    # OUT_DIR placeholder, not the real path: meta.json must not depend on where it was written.
    args = ["python", "-m", "surgseg_core.synth", kind, out_dir]
    for key, value in opts.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(a) for a in args)


def write_synthetic_clip(
    out_dir,
    seed: int = 0,
    n_frames: int = 48,
    height: int = 240,
    width: int = 320,
    fps: float = 25.0,
    progress: Optional[ProgressCallback] = None,
    *,
    cancel: Optional[CancelToken] = None,
    absent_classes: Sequence[int] = (),
) -> Path:
    """Render :func:`generate_endoscopy_clip` into ``out_dir`` (video.mp4,
    instruments/, anatomy/, tool_landmarks.csv, tool_annotations.csv, fov_mask.png, meta.json) and
    return the folder. ``absent_classes``: anatomy classes this patient
    lacks (e.g. (3, 5): no IP, no OCR). Raises ConfigError for bad sizes,
    DatasetError if ``out_dir`` holds something else, Cancelled when cancelled."""
    out_dir = Path(out_dir)
    _check_even(f"synthetic clip {out_dir}", height, width)
    clip = generate_endoscopy_clip(seed=seed, n_frames=n_frames, height=height, width=width, fps=fps,
                                   absent_classes=tuple(absent_classes))
    subdirs = ("instruments", "anatomy")
    _prepare_dir(out_dir, "endoscopy_clip", subdirs)
    video = _VideoWriter(out_dir / "video.mp4", clip.height, clip.width, clip.fps)
    rows = []
    active_rows = []  # tool_annotations.csv: the active tool only (or "none" rows)
    try:
        for i in range(len(clip)):
            check_cancel(cancel)
            fr = clip.frame(i)
            video.write(fr.image)
            write_png(out_dir / "instruments" / frame_name(i), fr.instruments)
            write_png(out_dir / "anatomy" / frame_name(i), fr.anatomy)
            for lm in fr.landmarks:
                rows.append(
                    [i, lm["instrument_id"], int(lm["active"]), lm["action"],
                     *(f"{v:.3f}" for v in (*lm["tip"], *lm["anchor"]))]
                )  # fmt: skip
            active = [lm for lm in fr.landmarks if lm["active"]]
            active_rows += [["video.mp4", i, lm["instrument_id"], TOOL_TYPES[lm["action"]], lm["action"],
                             *(f"{v:.3f}" for v in (*lm["tip"], *lm["anchor"]))] for lm in active] \
                or [["video.mp4", i, "", "", "", "", "", "", ""]]
            report(progress, i + 1, len(clip), f"frame {i + 1}/{len(clip)}")
    except BaseException as exc:
        video.close(exc)
        raise
    video.close()
    _remove_stale_frames(out_dir, subdirs, len(clip))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LANDMARK_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out_dir / "tool_landmarks.csv", buf.getvalue())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TOOL_ANNOTATION_COLUMNS)
    writer.writerows(active_rows)
    atomic_write_text(out_dir / "tool_annotations.csv", buf.getvalue())
    write_png(out_dir / "fov_mask.png", clip.fov.mask().astype(np.uint8) * 255)
    meta = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "kind": "endoscopy_clip",
        "seed": clip.seed,
        "n_frames": clip.n_frames,
        "height": clip.height,
        "width": clip.width,
        "fps": clip.fps,
        "anatomy_classes": {str(k): name for k, name in enumerate(ANATOMY_CLASSES)},
        "anatomy_class_long_names": {str(k): name for k, name in enumerate(ANATOMY_LONG_NAMES)},
        "actions": list(ACTIONS),
        "instruments": {
            str(t.instrument_id): {"action": t.action, "tool_type": TOOL_TYPES[t.action]} for t in clip.tracks
        },
        "fov": {"cx": clip.fov.cx, "cy": clip.fov.cy, "radius": clip.fov.radius},
        "landmark_columns": list(LANDMARK_COLUMNS),
        "video": {"file": "video.mp4", "codec": "libx264", "pix_fmt": "yuv420p", "crf": VIDEO_CRF,
                  "ffmpeg_version": ffmpeg_version()},
        "command": _command("clip", "OUT_DIR", seed=clip.seed, frames=clip.n_frames, height=clip.height,
                            width=clip.width, fps=clip.fps),
    }  # fmt: skip
    if clip.absent_classes:  # only then: clips without absent classes keep their meta.json bytes
        meta["absent_classes"] = list(clip.absent_classes)
        meta["command"] += " --absent-classes " + " ".join(str(c) for c in clip.absent_classes)
    write_json(out_dir / "meta.json", meta)
    log.info("wrote synthetic clip (%d frames) to %s", clip.n_frames, out_dir)
    return out_dir


def curves_to_json(curves) -> dict:
    """{name: [[[x, y], ...], ...]} with plain floats (3 decimals)."""
    return {name: [[[float(x), float(y)] for x, y in line] for line in curves[name]] for name in CURVE_NAMES}


def write_liver_dataset(
    out_dir,
    seed: int = 0,
    n_frames: int = 40,
    height: int = 320,
    width: int = 416,
    progress: Optional[ProgressCallback] = None,
    *,
    line_width: Optional[int] = None,
    fps: float = 10.0,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Render :func:`generate_liver_scene` into ``out_dir`` (video.mp4,
    images/, masks/, curves.json, fov_mask.png, meta.json); returns the folder."""
    out_dir = Path(out_dir)
    if not fps > 0:
        raise ConfigError(f"synthetic liver scene: fps must be > 0, got {fps}")
    _check_even(f"synthetic liver scene {out_dir}", height, width)
    scene = generate_liver_scene(seed=seed, n_frames=n_frames, height=height, width=width, line_width=line_width)
    subdirs = ("images", "masks")
    _prepare_dir(out_dir, "liver_scene", subdirs)
    video = _VideoWriter(out_dir / "video.mp4", scene.height, scene.width, fps)
    curves = {}
    try:
        for i in range(len(scene)):
            check_cancel(cancel)
            fr = scene.frame(i)
            video.write(fr.image)
            write_png(out_dir / "images" / frame_name(i), fr.image)
            write_png(out_dir / "masks" / frame_name(i), fr.mask)
            curves[f"{i:06d}"] = curves_to_json(fr.curves)
            report(progress, i + 1, len(scene), f"frame {i + 1}/{len(scene)}")
    except BaseException as exc:
        video.close(exc)
        raise
    video.close()
    _remove_stale_frames(out_dir, subdirs, len(scene))
    atomic_write_text(out_dir / "curves.json", json.dumps(curves, sort_keys=True, separators=(",", ":")) + "\n")
    write_png(out_dir / "fov_mask.png", scene.fov.mask().astype(np.uint8) * 255)
    meta = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "kind": "liver_scene",
        "seed": scene.seed,
        "n_frames": scene.n_frames,
        "height": scene.height,
        "width": scene.width,
        "fps": float(fps),
        "line_width": scene.line_width,
        "classes": {str(k): name for k, name in enumerate(LIVER_CLASSES)},
        "mask_priority": "curves drawn in the order silhouette, ridge, ligament; a later class overwrites an "
        "earlier one where they cross; ridge and ligament are clipped to the liver",
        "fov": {"cx": scene.fov.cx, "cy": scene.fov.cy, "radius": scene.fov.radius},
        "video": {"file": "video.mp4", "codec": "libx264", "pix_fmt": "yuv420p", "crf": VIDEO_CRF,
                  "ffmpeg_version": ffmpeg_version()},
        "command": _command("liver", "OUT_DIR", seed=scene.seed, frames=scene.n_frames, height=scene.height,
                            width=scene.width, line_width=scene.line_width, fps=float(fps)),
    }  # fmt: skip
    write_json(out_dir / "meta.json", meta)
    log.info("wrote synthetic liver scene (%d frames) to %s", scene.n_frames, out_dir)
    return out_dir


__all__ = [
    "write_synthetic_clip",
    "write_liver_dataset",
    "frame_name",
    "png_bytes",
    "curves_to_json",
    "LANDMARK_COLUMNS",
    "read_tool_landmarks",
    "read_liver_curves",
]


def read_tool_landmarks(path) -> Dict[int, List[dict]]:
    """Read ``tool_landmarks.csv`` back: {frame: [dict(instrument_id, active,
    action, tip (x, y), anchor (x, y)), ...]} (frames without rows absent)."""
    path = Path(path)
    out: Dict[int, List[dict]] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != LANDMARK_COLUMNS:
                raise DatasetError(f"{path}: expected columns {','.join(LANDMARK_COLUMNS)}, got {reader.fieldnames}")
            for n, row in enumerate(reader, start=2):
                try:
                    lm = dict(
                        instrument_id=int(row["instrument_id"]),
                        active=bool(int(row["active"])),
                        action=row["action"],
                        tip=(float(row["tip_x"]), float(row["tip_y"])),
                        anchor=(float(row["anchor_x"]), float(row["anchor_y"])),
                    )
                    out.setdefault(int(row["frame"]), []).append(lm)
                except (TypeError, ValueError) as exc:
                    raise DatasetError(f"{path}, line {n}: bad value ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read tool landmarks {path}: {exc}") from exc
    return out


def read_liver_curves(path) -> Dict[int, Dict[str, List[np.ndarray]]]:
    """Read ``curves.json`` back: {frame: {class name: [(N, 2) x, y arrays]}}."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text())
        return {
            int(key): {name: [np.asarray(line, dtype=float).reshape(-1, 2) for line in frame.get(name, [])]
                       for name in CURVE_NAMES}
            for key, frame in data.items()
        }  # fmt: skip
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise DatasetError(f"cannot read liver curves {path}: {exc}") from exc


def write_liver_training_folder(
    root,
    seeds: Iterable[int],
    n_frames: int,
    height: int = 320,
    width: int = 416,
    *,
    line_width: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Frames of several liver scenes (one per seed) in the generic training
    layout ``root/images/sSS_FFF.png`` + ``root/masks/sSS_FFF.png`` (0-3):
    many scenes make a better training set than many frames of one."""
    root = Path(root)
    seeds = list(seeds)
    total = len(seeds) * n_frames
    done = 0
    for s in seeds:
        scene = generate_liver_scene(seed=s, n_frames=n_frames, height=height, width=width, line_width=line_width)
        for i in range(n_frames):
            check_cancel(cancel)
            fr = scene.frame(i)
            write_png(root / "images" / f"s{s:02d}_{i:03d}.png", fr.image)
            write_png(root / "masks" / f"s{s:02d}_{i:03d}.png", fr.mask)
            done += 1
            report(progress, done, total, f"liver scene {s}, frame {i}")
    return root
