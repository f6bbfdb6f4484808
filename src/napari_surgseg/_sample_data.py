"""Sample data: the synthetic clips from ``surgseg_core.synth`` with their
ground truth, as napari layers.

The folders come from the repository's ``sample_data/`` (editable install or
source checkout), or ``$SURGSEG_SAMPLE_DATA``; when neither holds them (a
wheel install), they are regenerated deterministically once into the user
cache folder. The video layer is lazy (``open_video``); masks are small and
loaded into memory so they can be edited.
"""
from __future__ import annotations

import json

import numpy as np
from surgseg_core.synth.sample import CLIP_DIR, LIVER_DIR, sample_folder

from .widgets.base.layers import (
    PLAYBACK_PREFETCH,
    announce_video,
    labels_layer_data,
    points_layer_data,
    video_layer_data,
)

# Curve colours of the liver scene (silhouette, ridge, ligament), P2ILF-like.
_CURVE_COLORS = {"silhouette": "yellow", "ridge": "red", "ligament": "blue"}


def _class_features(names: dict) -> dict:
    # napari Labels show the feature row whose "index" equals the hovered id.
    ids = sorted(int(k) for k in names)
    return {"index": ids, "name": [names[str(i)] for i in ids]}


def sample_clip() -> list:
    """Synthetic endoscopy clip: video, instrument and anatomy labels, tool tips and anchors."""
    from surgseg_core.io import open_video
    from surgseg_core.io.export import read_png_masks
    from surgseg_core.synth.writer import read_tool_landmarks

    folder = sample_folder(CLIP_DIR)
    meta = json.loads((folder / "meta.json").read_text())
    source = open_video(folder / "video.mp4", prefetch=PLAYBACK_PREFETCH)
    announce_video(source)
    video = video_layer_data(source, name="synthetic clip")

    instruments = labels_layer_data(read_png_masks(folder / "instruments"), "instruments (ground truth)", meta)
    anatomy = labels_layer_data(read_png_masks(folder / "anatomy"), "anatomy (ground truth)", meta)
    anatomy[1]["features"] = _class_features(meta.get("anatomy_classes", {}))
    anatomy[1]["opacity"] = 0.4

    landmarks = read_tool_landmarks(folder / "tool_landmarks.csv")
    rows = [(f, lm) for f in sorted(landmarks) for lm in landmarks[f]]
    feats = {
        "instrument_id": np.array([lm["instrument_id"] for _, lm in rows], dtype=int),
        "action": np.array([lm["action"] for _, lm in rows], dtype=object),
        "active": np.array([lm["active"] for _, lm in rows], dtype=bool),
    }
    tips = np.array([(f, lm["tip"][1], lm["tip"][0]) for f, lm in rows], dtype=float).reshape(-1, 3)
    anchors = np.array([(f, lm["anchor"][1], lm["anchor"][0]) for f, lm in rows], dtype=float).reshape(-1, 3)
    return [
        video,
        anatomy,
        instruments,
        points_layer_data(anchors, "tool anchors (ground truth)", feats, face_color="cyan"),
        points_layer_data(tips, "tool tips (ground truth)", feats, face_color="yellow"),
    ]


def sample_liver() -> list:
    """Synthetic liver scene: video, curve masks (silhouette, ridge, ligament) and the curves as paths."""
    from surgseg_core.io import open_video
    from surgseg_core.io.export import read_png_masks
    from surgseg_core.synth.writer import read_liver_curves

    folder = sample_folder(LIVER_DIR)
    meta = json.loads((folder / "meta.json").read_text())
    source = open_video(folder / "video.mp4", prefetch=PLAYBACK_PREFETCH)
    announce_video(source)
    video = video_layer_data(source, name="synthetic liver")
    masks = labels_layer_data(read_png_masks(folder / "masks"), "liver curves mask (ground truth)", meta)
    masks[1]["features"] = _class_features(meta.get("classes", {}))

    paths, colors, names = [], [], []
    for frame, curves in sorted(read_liver_curves(folder / "curves.json").items()):
        for name, lines in curves.items():
            for line in lines:
                if len(line) < 2:
                    continue
                # napari shapes are (t, y, x); the files store (x, y)
                paths.append(np.column_stack([np.full(len(line), frame), line[:, 1], line[:, 0]]))
                colors.append(_CURVE_COLORS.get(name, "white"))
                names.append(name)
    layers = [video, masks]
    if paths:
        layers.append(
            (
                paths,
                {
                    "name": "liver curves (ground truth)",
                    "shape_type": "path",
                    "edge_color": colors,
                    "edge_width": 2,
                    "features": {"curve": np.array(names, dtype=object)},
                    "axis_labels": ("t", "y", "x"),
                },
                "shapes",
            )
        )
    return layers
