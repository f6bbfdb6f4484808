"""Running a trained liver model on frames, videos and image folders.

One code path for the CLI (``surgseg predict liver``), the napari widget and
Python: :class:`LiverPredictor` resizes frames to the network input, runs the
model, and post-processes at the frame's own resolution.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ... import __version__
from ...errors import ConfigError, VideoError
from ...io.pixels import frame_to_rgb8
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ...provenance import file_sha256
from .data import IMAGE_SUFFIXES, resize_image, resize_mask
from .model import input_size
from .postprocess import LandmarkResult, PostprocessOptions, postprocess

log = logging.getLogger(__name__)


def options_from_config(config: Mapping[str, Any]) -> PostprocessOptions:
    """PostprocessOptions from ``pp_*`` config keys (e.g. ``pp_join_distance``)."""
    fields = PostprocessOptions.__dataclass_fields__
    kw = {k[3:]: v for k, v in config.items() if k.startswith("pp_") and k[3:] in fields}
    unknown = [k for k in config if k.startswith("pp_") and k[3:] not in fields]
    if unknown:
        raise ConfigError(f"unknown post-processing option(s): {', '.join(unknown)}; known: "
                          + ", ".join("pp_" + f for f in fields))
    if "out_thickness" not in kw and "eval_thickness" in config:
        kw["out_thickness"] = float(config["eval_thickness"])
    return PostprocessOptions(**kw)


@dataclass
class FramePrediction:
    labels: np.ndarray              # raw argmax at the network resolution
    raw_full: np.ndarray            # raw argmax resized (nearest) to the frame size
    result: Optional[LandmarkResult]  # post-processed (None when disabled)


class LiverPredictor:
    def __init__(self, model: torch.nn.Module, config: Mapping[str, Any], device=None,
                 checkpoint: Optional[str] = None) -> None:
        self.model = model.eval()
        self.config = dict(config)
        self.size = input_size(config)
        self.device = device or next(model.parameters()).device
        self.checkpoint = checkpoint
        self.options = options_from_config(config)

    @classmethod
    def from_checkpoint(cls, checkpoint, config: Optional[Mapping[str, Any]] = None, device: str = "cpu"):
        from ...training.inference import load_trained_model

        _, model, cfg, dev = load_trained_model("liver", checkpoint, config, device)
        return cls(model, cfg, dev, str(checkpoint))

    def provenance(self, options: Optional[PostprocessOptions] = None) -> Dict[str, Any]:
        prov = {
            "method": "liver", "surgseg_version": __version__,
            "model": {"arch": self.config.get("arch"), "encoder": self.config.get("encoder"),
                      "input_size": list(self.size)},
            "postprocess": (options or self.options).to_dict() if self.config.get("postprocess", True) else None,
        }
        if self.checkpoint:
            prov["checkpoint"] = self.checkpoint
            prov["checkpoint_sha256"] = file_sha256(self.checkpoint)  # cached by size + mtime
        return prov

    @torch.no_grad()
    def label_maps(self, frames: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Argmax label maps at the network resolution for RGB uint8 frames."""
        small = [resize_image(np.asarray(f)[..., :3], self.size) for f in frames]
        x = torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float().div_(255.0).to(self.device)
        logits = self.model(x)
        return [m for m in logits.argmax(1).to(torch.uint8).cpu().numpy()]

    def predict(self, frames: Sequence[np.ndarray], options: Optional[PostprocessOptions] = None,
                postprocess_on: Optional[bool] = None) -> List[FramePrediction]:
        options = options or self.options
        do_pp = self.config.get("postprocess", True) if postprocess_on is None else postprocess_on
        # grey, RGBA, 16-bit or float frames (a napari layer can hold any) -> RGB uint8
        frames = [frame_to_rgb8(f, "liver prediction input") for f in frames]
        out = []
        for frame, lab in zip(frames, self.label_maps(frames)):
            h, w = frame.shape[:2]
            res = None
            if do_pp:
                small = resize_image(frame[..., :3], self.size)
                res = postprocess(lab, small, out_shape=(h, w), options=options)
            out.append(FramePrediction(lab, resize_mask(lab, (w, h)), res))
        return out


def _open_input(path: Path):
    """Frames of a video file, TIFF stack or image folder (lazy)."""
    from ...io import open_video

    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise VideoError(f"no images in folder {path}")
        from .readers import read_image

        class _Folder:
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                return read_image(images[i])

        return _Folder(), [p.stem for p in images]
    src = open_video(path)
    return src, [f"{i:06d}" for i in range(len(src))]


def predict_inputs(model, inputs: Iterable, out_dir, config: Mapping[str, Any], *,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   batch_size: int = 4) -> List[Path]:
    """Per input (video or image folder) ``OUT/<name>/``: ``labels/<frame>.png``
    (post-processed dilated map, or the raw argmax when post-processing is
    off), ``landmarks.json``, ``landmarks.csv`` and ``xml/<frame>.xml`` (P2ILF),
    and ``provenance.json`` (input and its hash, frames, model and its hash;
    also in landmarks.json and beside landmarks.csv). Returns the written folders."""
    import imageio.v3 as iio

    from ...atomic import atomic_path
    from .export import write_landmarks_csv, write_landmarks_json, write_p2ilf_xml

    predictor = model if isinstance(model, LiverPredictor) else LiverPredictor(
        model, config, checkpoint=config.get("checkpoint"))
    out_dir = Path(out_dir)
    written = []
    for path in map(Path, inputs):
        frames, names = _open_input(path)
        dest = out_dir / (path.stem if path.is_file() else path.name)
        (dest / "labels").mkdir(parents=True, exist_ok=True)
        polylines: Dict[int, Dict[int, List[np.ndarray]]] = {}
        n = len(frames)
        size = None
        for start in range(0, n, batch_size):
            check_cancel(cancel)
            idx = list(range(start, min(n, start + batch_size)))
            batch = [np.asarray(frames[i]) for i in idx]
            for i, frame, pred in zip(idx, batch, predictor.predict(batch)):
                size = (frame.shape[1], frame.shape[0])
                labels = pred.result.dilated if pred.result is not None and pred.result.dilated is not None \
                    else (pred.result.thin if pred.result is not None else pred.raw_full)
                with atomic_path(dest / "labels" / f"{names[i]}.png") as tmp:
                    iio.imwrite(tmp, labels.astype(np.uint8), extension=".png")
                if pred.result is not None:
                    polylines[i] = pred.result.polylines
                    write_p2ilf_xml(dest / "xml" / f"{names[i]}.xml", pred.result.polylines)
            report(progress, idx[-1] + 1, n, f"{path.name}: frame {idx[-1] + 1}/{n}")
        from ...atomic import atomic_write_text
        from ...provenance import FOLDER_FILE, build_provenance, dumps, source_fields

        prov = build_provenance(base={**predictor.provenance(), "input": str(path)}, result="prediction:liver",
                                **source_fields(frames, range(n), path=path))
        write_landmarks_json(dest / "landmarks.json", polylines, size, prov)
        write_landmarks_csv(dest / "landmarks.csv", polylines, prov)
        atomic_write_text(dest / FOLDER_FILE, dumps(prov) + "\n")
        written.append(dest)
        log.info("liver landmarks for %s written to %s", path, dest)
    return written


def predict_frames(predictor: "LiverPredictor", frames, indices: Sequence[int], *,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   batch_size: int = 4, postprocess_on: Optional[bool] = None,
                   sink: Optional[Callable[[int, FramePrediction], None]] = None) -> Dict[int, FramePrediction]:
    """Predictions for ``frames[i]`` for each i in ``indices`` (frames: any
    (T, H, W, 3) array-like, read a batch at a time), as {i: prediction}.

    ``sink(i, prediction)``: called as each frame finishes, and then nothing
    is kept (the returned dict is empty): a whole video's label maps never sit
    in memory, and whatever the sink stored before a cancel stays."""
    out: Dict[int, FramePrediction] = {}
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        check_cancel(cancel)
        idx = indices[start:start + batch_size]
        batch = [frames[i] for i in idx]
        for i, pred in zip(idx, predictor.predict(batch, postprocess_on=postprocess_on)):
            if sink is not None:
                sink(i, pred)
            else:
                out[i] = pred
        report(progress, min(start + batch_size, len(indices)), len(indices), f"frame {idx[-1]}")
    return out
