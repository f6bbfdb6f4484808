"""Clicks on a video with RP-SAM2: the one code path behind the
"Clicks (RP-SAM2)" napari widget and Python use.

    from surgseg_core.methods.rpsam2.clicks import ClickRefiner, load_click_model
    refiner = ClickRefiner(load_click_model("surgseg-demo-rpsam2"))
    refiner.encode(frames, 12)                 # image encoder + the block's image side, once per frame
    out = refiner.click(frames, 12, prompts)   # later clicks: the block's click side + SAM2's decoder
    out["labels"], out["refined"]              # label map of the frame, each click and where it moved
    refiner.track(frames, 12, prompts, direction="both", sink=writer)   # every object through the video
    refiner.repropagate(frames, labels, 30, direction="forward")        # from a corrected frame

A refiner keeps one streaming engine per video (``ClickSession`` with the
model's prompt hook), so a frame is encoded once per (frame, model) for as
long as the refiner lives; build a new one for another model. Tracking
sends the frame's clicks through the same prompt hook, so the tracked masks
on that frame are the ones the clicks showed.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ...errors import ConfigError
from ...progress import CancelToken, check_cancel

#: the "random tiny (testing)" model: random-init surgseg_tiny SAM2 and an
#: untrained, small shift block (an untrained block moves no click)
RANDOM_TINY_CONFIG: Dict[str, Any] = {"sam2_config": "surgseg_tiny", "seed": 0, "shift_layers": 2,
                                      "shift_mlp_dim": 256, "feature_cache": "off"}


def load_click_model(weights: Optional[str] = None, *, device: Optional[str] = None):
    """RP-SAM2 from registered weights or a checkpoint (``None``: the random
    tiny model of :data:`RANDOM_TINY_CONFIG`, for testing)."""
    from .model import build_rpsam2, load_rpsam2

    if weights is None:
        model = build_rpsam2(RANDOM_TINY_CONFIG)
        if device is not None:
            from ...device import resolve_device

            model.to(resolve_device(device))
        return model.eval()
    return load_rpsam2(str(weights), device=device)


def is_random(model) -> bool:
    """True when the masks mean nothing: the base SAM2 or the block is untrained."""
    return getattr(model.sam, "surgseg_checkpoint", None) is None or not model.train_options.get("checkpoint")


class ClickRefiner:
    """RP-SAM2 clicks on videos (see the module doc). ``max_engines``:
    how many videos stay encoded at once."""

    def __init__(self, model, *, max_engines: int = 1) -> None:
        self.model = model
        self.session = model.click_session(max_engines=max_engines)
        self.random_weights = is_random(model)

    def encoded(self, frames: Any, frame: int) -> bool:
        """Whether ``frame`` of ``frames`` is encoded (a click there decodes only)."""
        engine = self.session.find(frames, self.model.sam)
        return engine is not None and int(frame) in engine.cache

    def encode(self, frames: Any, frame: int, *, cancel: Optional[CancelToken] = None, **_: Any) -> bool:
        """Encode a frame ahead of clicks (image encoder and the block's
        image-side keys); False when it already was."""
        check_cancel(cancel)
        engine = self.session.engine(frames, self.model.sam)
        if int(frame) in engine.cache:
            return False
        feats = engine.frame_features(int(frame))
        with torch.inference_mode():  # the hook reads the keys back for the same features
            self.model.frame_keys(feats)
        return True

    def click(self, frames: Any, frame: int, prompts: Sequence[Mapping[str, Any]], *,
              cancel: Optional[CancelToken] = None, **_: Any) -> Dict[str, Any]:
        """Masks of every object clicked on ``frame`` from that frame's clicks
        (``track.normalize_prompts`` format, video pixels; other frames'
        prompts are ignored), with where each click moved.

        Returns ``{"frame", "labels" ((H, W) label map), "obj_ids",
        "refined": [{"obj_id", "points", "labels", "refined"}],
        "random_weights", "provenance"}``; ``refined`` holds the points
        SAM2 saw (video pixels), one per click, in click order."""
        from ...sam2_engine.track import normalize_prompts

        here = [p for p in normalize_prompts(prompts, len(frames)) if p["frame"] == int(frame)]
        if not here:
            raise ConfigError(f"no clicks on frame {frame}")
        result = self.session.segment_frame(frames, self.model.sam, int(frame), here, cancel=cancel)
        engine = self.session.engine(frames, self.model.sam)
        refined = [{"obj_id": e["object"], "points": e["points"], "labels": e["labels"],
                    "refined": e.get("points_after_hook", e["points"])}
                   for e in engine.prompt_log if e.get("frame") == int(frame) and "points" in e]
        return {"frame": int(frame), "labels": result.label_map(), "obj_ids": list(result.obj_ids),
                "refined": refined, "random_weights": self.random_weights,
                "provenance": self._provenance(engine.provenance())}

    def track(self, frames: Any, frame: int, prompts: Sequence[Mapping[str, Any]], **kwargs: Any) -> Dict[str, Any]:
        """Track every object clicked on ``frame`` through the video from its
        refined clicks: ``track.track_video`` (``kwargs``: direction,
        frame_range, sink, progress, cancel, ...) with the model's prompt hook.
        Returns its summary."""
        from ...sam2_engine.track import normalize_prompts, track_video

        here = [p for p in normalize_prompts(prompts, len(frames)) if p["frame"] == int(frame)]
        if not here:
            raise ConfigError(f"no clicks on frame {frame}: click on each instrument there first")
        summary = track_video(frames, here, model=self.model.sam, prompt_hook=self.model.prompt_hook, **kwargs)
        summary["random_weights"] = self.random_weights
        summary["provenance"] = self._provenance(summary["provenance"])
        return summary

    def repropagate(self, frames: Any, labels: Any, frame: int, **kwargs: Any) -> Dict[str, Any]:
        """``refine.repropagate`` (a corrected frame's masks as prompts) with
        the model's SAM2; ``kwargs`` as there. Returns its summary."""
        from ...sam2_engine.refine import repropagate

        summary = repropagate(frames, labels, frame, model=self.model.sam, **kwargs)
        summary["random_weights"] = self.random_weights
        summary["provenance"] = self._provenance(summary["provenance"])
        return summary

    def _provenance(self, prov: Dict[str, Any]) -> Dict[str, Any]:
        """The engine's provenance plus what RP-SAM2 adds (block weights, base, which clicks move)."""
        prov = dict(prov)
        prov["rpsam2"] = {"weights": self.model.train_options.get("checkpoint"), "base": dict(self.model.surgseg_base),
                          "shift_points": self.model.shift_points}
        prov["random_weights"] = self.random_weights
        if self.random_weights:
            prov["warning"] = ("RP-SAM2 runs with RANDOM (untrained) weights: the masks are not segmentations "
                               "(use only for testing the pipeline)")
        return prov


def refined_points(out: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per click of a :meth:`ClickRefiner.click` result:
    ``{"obj_id", "positive", "click": [x, y], "refined": [x, y]}``."""
    rows = []
    for entry in out["refined"]:
        for xy, label, moved in zip(entry["points"], entry["labels"], entry["refined"]):
            if int(label) not in (0, 1):  # box corners
                continue
            rows.append({"obj_id": int(entry["obj_id"]), "positive": int(label) == 1,
                         "click": [float(v) for v in xy], "refined": [float(v) for v in moved]})
    return rows
