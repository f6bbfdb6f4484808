"""``surgseg predict rpsam2``: pseudo masks from clicks (the paper's
semi-automatic labelling), in the layout ``surgseg train sam2`` reads.

Clicks come from ``--set points=FILE``: a CSV ``frame,x,y[,obj_id][,positive]``
(what ``surgseg track --points`` and the napari points export use) or a
JSON list of prompts ``{"frame", "obj_id", "points", "labels"}`` in video
pixels. Each clicked frame of each input (video or frame folder) is
segmented through the click session with RP-SAM2's prompt hook; written::

    OUT/images/<input>_f<frame>.png     the frame
    OUT/masks/<input>_f<frame>.png      index mask (object id per pixel)
    OUT/refined_points.json             clicks before/after refinement

(the "Corrections -> dataset" layout: ``surgseg train sam2 --set
train_root=OUT`` trains on it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from ...atomic import atomic_path, atomic_write_text
from ...errors import ConfigError
from ...progress import CancelToken, ProgressCallback, check_cancel, report


def read_prompts(path: Any) -> List[Dict[str, Any]]:
    """Prompts from a points CSV or a JSON prompt list (checked)."""
    from ...sam2_engine.track import normalize_prompts, prompts_from_points_table

    if path is None:
        raise ConfigError("rpsam2 predict: give the clicks with --set points=clicks.csv (frame,x,y[,obj_id][,positive]) "
                          "or a JSON prompt list")
    p = Path(str(path))
    if not p.is_file():
        raise ConfigError(f"rpsam2 predict: clicks file not found: {p}")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{p}: not valid JSON ({exc})") from None
        try:
            return normalize_prompts(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    from ...io.export import read_points_csv

    table = read_points_csv(p)
    if table.data.ndim != 2 or table.data.shape[1] != 3:
        raise ConfigError(f"{p}: needs a 'frame' column (columns frame,x,y[,obj_id][,positive])")
    try:
        return prompts_from_points_table(table)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _save_png(path: Path, arr: np.ndarray, provenance: Optional[Mapping[str, Any]] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if provenance is not None:  # PNG text chunk "provenance" (surgseg_core.provenance.read_provenance)
        from PIL.PngImagePlugin import PngInfo

        from ...provenance import KEY, dumps

        info = PngInfo()
        info.add_text(KEY, dumps(provenance))
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)


def predict_clicks(model, inputs: Sequence[Path], out_dir: Path, prompts: Sequence[Mapping[str, Any]], *,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   checkpoint: Optional[str] = None) -> List[Path]:
    """Masks of every clicked frame of every input (same clicks for each
    input); returns the written mask files. Each mask PNG carries its
    provenance (input video and hash, frame, RP-SAM2 block ``checkpoint``
    and SAM2 weights with their hashes, prompts) in a PNG text chunk;
    ``refined_points.json.provenance.json`` records the run."""
    from ...io import open_video
    from ...provenance import build_provenance, file_sha256, source_fields, video_identity, write_sidecar

    known = checkpoint and Path(str(checkpoint)).is_file()
    identity = {"name": "rpsam2", "variant": "rpsam2", "checkpoint": checkpoint,
                "checkpoint_sha256": file_sha256(checkpoint) if known else None}
    run_prov: Dict[str, Any] = {}

    out_dir = Path(out_dir)
    frames_wanted = sorted({int(p["frame"]) for p in prompts})
    written: List[Path] = []
    log: Dict[str, Any] = {}
    session = model.click_session()
    total = len(inputs) * len(frames_wanted)
    done = 0
    for src_path in inputs:
        src = open_video(src_path)
        try:
            if frames_wanted and frames_wanted[-1] >= len(src):
                raise ConfigError(f"clicks on frame {frames_wanted[-1]} but {src_path} has {len(src)} frames")
            name = Path(src_path).stem if Path(src_path).is_file() else Path(src_path).name
            for t in frames_wanted:
                check_cancel(cancel)
                result = session.segment_frame(src, model.sam, t, prompts, cancel=cancel)
                engine = session.engine(src, model.sam)
                stem = f"{name}_f{t:05d}"
                _save_png(out_dir / "images" / f"{stem}.png", np.asarray(src[t]))
                mask_path = out_dir / "masks" / f"{stem}.png"
                sam2 = dict(getattr(model, "surgseg_base", {}) or {})  # the SAM2 the block sits on
                prov = build_provenance(base={**engine.provenance(), "sam2": sam2},
                                        result="prediction:rpsam2", model=identity,
                                        prompts=[p for p in prompts if int(p["frame"]) == t],
                                        **source_fields(src, [t], path=src_path))
                run_prov = prov
                _save_png(mask_path, result.label_map().astype(np.uint8), prov)
                written.append(mask_path)
                log[stem] = [{k: e.get(k) for k in ("object", "points", "labels", "points_after_hook")}
                             for e in engine.prompt_log]
                done += 1
                report(progress, done, total, stem)
        finally:
            session.close()
            close = getattr(src, "close", None)
            if close is not None:
                close()
    atomic_write_text(out_dir / "refined_points.json", json.dumps(log, indent=1))
    write_sidecar(out_dir / "refined_points.json", build_provenance(
        base=run_prov, result="prediction:rpsam2", frames=frames_wanted, prompts=list(prompts),
        inputs=[video_identity(p) for p in inputs]))
    return written


def predict_method(model, inputs, out_dir, config: Mapping[str, Any], *, progress=None, cancel=None) -> List[Path]:
    return predict_clicks(model, inputs, out_dir, read_prompts(config.get("points")), progress=progress, cancel=cancel,
                          checkpoint=config.get("checkpoint"))
