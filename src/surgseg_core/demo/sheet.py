"""The demo's pictures of all methods: a PNG contact sheet (each method's
result beside the ground truth on a few frames) and one overlay MP4 with
the four sample-clip results tiled 2 x 2."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .common import sample_clip

Panel = Callable[[int], Tuple[np.ndarray, np.ndarray]]  # frame -> (prediction picture, ground-truth picture)

TIP_COLOUR, ANCHOR_COLOUR, CLICK_COLOUR, REFINED_COLOUR = (255, 60, 60), (60, 160, 255), (255, 0, 255), (0, 255, 0)


def _labels_tif(path: Path):
    from ..io.labels_io import open_labels

    return open_labels(path) if path.is_file() else None


def _truth_points(folder: Path) -> Dict[int, Dict[str, list]]:
    """{frame: {"tip": [(y, x)], "anchor": [(y, x)]}} from the clip's tool annotations."""
    from ..methods.tools.annotations import read_annotations

    out: Dict[int, Dict[str, list]] = {}
    for r in read_annotations(folder / "tool_annotations.csv"):
        d = out.setdefault(int(r.frame), {"tip": [], "anchor": []})
        for kind in ("tip", "anchor"):
            p = r.point(kind)
            if p is not None:
                d[kind].append((p[1], p[0]))
    return out


def panels(out: Path, summary: dict) -> Dict[str, Panel]:
    """One panel per method that ran on the sample clip: frame -> (result, truth) pictures."""
    from ..io import open_video
    from ..io.export import read_png_masks
    from ..io.overlay import paint_frame
    from ..methods.f2paseg.classes import PAS

    folder = sample_clip()
    video = open_video(folder / "video.mp4")
    instruments = read_png_masks(folder / "instruments")
    anatomy = read_png_masks(folder / "anatomy")
    result: Dict[str, Panel] = {}
    if "sam2" in summary and (out / "sam2_masks").is_dir():
        def sam2(t: int):
            from PIL import Image

            p = out / "sam2_masks" / f"{t:06d}.png"
            pred = np.asarray(Image.open(p)) if p.is_file() else np.zeros_like(np.asarray(instruments[t]))
            return paint_frame(video[t], pred), paint_frame(video[t], np.asarray(instruments[t]))
        result["Instruments (SAM2, box on frame 0)"] = sam2
    stack = _labels_tif(out / "anatomy_labels.tif")
    if stack is not None:
        colours = PAS.colours()

        def anatomy_panel(t: int, stack=stack):
            return (paint_frame(video[t], stack[t], colors=colours),
                    paint_frame(video[t], np.asarray(anatomy[t]), colors=colours))
        result["Anatomy (F2PASeg, boxes every 10 frames)"] = anatomy_panel
    clicks = _labels_tif(out / "clicks_tracked_labels.tif")
    if clicks is not None and "clicks" in summary:
        marks = summary["clicks"]["clicks"]

        def clicks_panel(t: int, clicks=clicks):
            pts = colours_ = None
            if t == 0:  # the raw click (magenta) and where RP-SAM2 moved it (green)
                pts = [(p["click"][1], p["click"][0]) for p in marks] + [(p["refined"][1], p["refined"][0])
                                                                         for p in marks]
                colours_ = [CLICK_COLOUR] * len(marks) + [REFINED_COLOUR] * len(marks)
            return (paint_frame(video[t], clicks[t], points_yx=pts, point_color=colours_ or CLICK_COLOUR),
                    paint_frame(video[t], np.asarray(instruments[t])))
        result["Clicks (RP-SAM2 click on frame 0, tracked)"] = clicks_panel
    if "tools" in summary and "points" in summary["tools"]:
        pred = {p["frame"]: p for p in summary["tools"]["points"]}
        truth = _truth_points(folder)
        heat = summary.get("_tool_heatmaps") or {}

        def tools_panel(t: int):
            frame = np.asarray(video[t])
            if t in heat:  # both heatmaps as a red/blue glow under the points
                from skimage.transform import resize

                h = resize(np.asarray(heat[t], np.float32), (heat[t].shape[0], *frame.shape[:2]), order=1)
                glow = np.clip(np.stack([h[0], np.zeros_like(h[0]), h[-1]], -1), 0, 1) * 255
                frame = np.clip(frame * 0.7 + glow * 0.6, 0, 255).astype(np.uint8)
            p = pred.get(t, {"tip": [], "anchor": []})
            yx = [(y, x) for x, y, *_ in p["tip"]] + [(y, x) for x, y, *_ in p["anchor"]]
            col = [TIP_COLOUR] * len(p["tip"]) + [ANCHOR_COLOUR] * len(p["anchor"])
            g = truth.get(t, {"tip": [], "anchor": []})
            return (paint_frame(frame, points_yx=yx, point_color=col or TIP_COLOUR),
                    paint_frame(video[t], points_yx=g["tip"] + g["anchor"],
                                point_color=[TIP_COLOUR] * len(g["tip"]) + [ANCHOR_COLOUR] * len(g["anchor"])
                                or TIP_COLOUR))
        result["Tool tips (red) / anchors (blue)"] = tools_panel
    return result


def contact_sheet(out: Path, summary: dict, n_frames: int, liver: Optional[Tuple[np.ndarray, np.ndarray]] = None
                  ) -> Optional[Path]:
    """``contact_sheet.png``: per method, three frames, each result beside
    its ground truth; the liver sample's first frame as the last row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    rows = panels(out, summary)
    if not rows and liver is None:
        return None
    frames = sorted({0, n_frames // 2, n_frames - 1})
    n_rows = len(rows) + (liver is not None)
    fig, axes = plt.subplots(n_rows, 2 * len(frames), figsize=(2.4 * 2 * len(frames), 2.3 * n_rows + 0.4), dpi=90,
                             squeeze=False)
    for r, (title, panel) in enumerate(rows.items()):
        for c, t in enumerate(frames):
            pred, truth = panel(t)
            for k, (img, what) in enumerate(((pred, "result"), (truth, "truth"))):
                ax = axes[r][2 * c + k]
                ax.imshow(img)
                ax.set_title(f"{title}\nframe {t}: {what}" if c == k == 0 else f"\nframe {t}: {what}", fontsize=7,
                             loc="left" if c == k == 0 else "center")
    if liver is not None:
        r = n_rows - 1
        axes[r][0].imshow(liver[0])
        axes[r][0].set_title("Liver landmarks (liver sample)\nresult: curves", fontsize=7, loc="left")
        axes[r][1].imshow(liver[1])
        axes[r][1].set_title("\ntruth", fontsize=7)
        for ax in axes[r][2:]:
            ax.set_visible(False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("surgseg demo on synthetic data: each result beside the generator's ground truth", fontsize=9)
    fig.tight_layout()
    target = out / "contact_sheet.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


class _Tiled:
    """The results of all panels tiled 2 x 2, one frame at a time (lazy)."""

    def __init__(self, panels_: List[Panel], n: int, h: int, w: int) -> None:
        self.panels, self.n, self.h, self.w = panels_, n, h, w
        self.shape = (n, 2 * h, 2 * w, 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, t: int) -> np.ndarray:
        tile = np.zeros(self.shape[1:], np.uint8)
        for i, panel in enumerate(self.panels[:4]):
            y, x = divmod(i, 2)
            tile[y * self.h:(y + 1) * self.h, x * self.w:(x + 1) * self.w] = panel(int(t))[0]
        return tile


def overlay_all(out: Path, summary: dict, n_frames: int, progress=None, cancel=None) -> Optional[Path]:
    """``all_results_overlay.mp4``: SAM2 | anatomy / clicks | tools, tiled."""
    from ..io.overlay import export_overlay_video

    rows = list(panels(out, summary).values())
    if not rows:
        return None
    first = rows[0](0)[0]
    tiled = _Tiled(rows, n_frames, first.shape[0], first.shape[1])
    return export_overlay_video(tiled, out / "all_results_overlay.mp4", fps=8.0, progress=progress, cancel=cancel)
