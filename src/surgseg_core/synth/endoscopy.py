"""Synthetic endonasal-endoscopy clips with ground truth for every method.

A large tissue "canvas" (pinkish mucosa, vessels, six pituitary-style anatomy
regions with their own colour and texture) is rendered once per clip; each
frame views a window of it through a slowly panning/zooming/rotating camera,
adds the endoscope's vignetting, specular highlights and sensor noise, and
composites moving instruments (metallic shaft + fixed and moving jaw) on top.
Masks, anatomy labels and tip/anchor landmarks come from the same geometry,
so they match the pixels exactly. Frames are rendered lazily: a clip object
holds only the canvas and per-frame trajectories (a few MB).

Determinism: every random number comes from ``numpy.random.Generator``
instances seeded from ``seed`` (and the frame index for per-frame noise), so
``frame(i)`` is bit-for-bit the same in any order, any process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from .fov import FOV
from .noise import fractal_noise, smooth_noise, smooth_path
from .raster import draw_polylines, tapered_capsule

GENERATOR_VERSION = "3"  # 2: liver ligament runs from the ridge to the edge; curve points always in masks; 3: larger ICA prominences and optic-carotid recesses nearer the centre, camera looking towards one side

ANATOMY_CLASSES: Tuple[str, ...] = ("background", "SF", "TS", "IP", "CR", "OCR", "OP")
ANATOMY_LONG_NAMES: Tuple[str, ...] = (
    "background",
    "sella floor",
    "tuberculum sella",
    "ICA prominence",
    "clival recess",
    "optic-carotid recess",
    "optic prominence",
)
ACTIONS: Tuple[str, ...] = ("clip", "grasp", "dissect")
TOOL_TYPES = {"clip": "clip applier", "grasp": "grasper", "dissect": "dissector"}  # what each action is done with
# Layout of the sellar region seen through the nose, in normalised canvas
# coordinates (class, centre u, v, half axes u, v, rotation), painted in this
# order: sella floor in the centre, tuberculum above it, clival recess below,
# ICA prominences either side, optic prominences above those, and the small
# optic-carotid recesses between the two. (Before version 3 the prominences and
# recesses sat at the rim of the view: a sliver under one 16-px token of a
# 256-px SAM2, which the demo F2PASeg never learned; the rare classes are rare
# by clip, ``absent_classes``, as in the paper's data.)
_LAYOUT = (
    (1, 0.50, 0.52, 0.13, 0.11, 0.0),
    (2, 0.50, 0.37, 0.13, 0.035, 0.05),
    (4, 0.50, 0.69, 0.09, 0.05, 0.0),
    (3, 0.32, 0.54, 0.045, 0.11, 0.15),
    (3, 0.68, 0.54, 0.045, 0.11, -0.15),
    (6, 0.29, 0.31, 0.05, 0.035, -0.4),
    (6, 0.71, 0.31, 0.05, 0.035, 0.4),
    (5, 0.255, 0.41, 0.035, 0.045, 0.0),
    (5, 0.745, 0.41, 0.035, 0.045, 0.0),
)
_SIDE_OFFSET = 0.12  # the camera looks this far (canvas widths) towards one side
_ENTRY_SECTORS = ((0.2, 0.45), (0.55, 0.8), (-0.05, 0.15), (0.85, 1.05))

# Base colours (RGB, 0-255) of the tissue and of each anatomy class; chosen so
# every class differs from its neighbours in hue or brightness.
_MUCOSA = np.array([196.0, 104.0, 100.0])
_CLASS_COLOURS = {
    1: np.array([226.0, 188.0, 156.0]),  # SF: pale bone/dura
    2: np.array([238.0, 222.0, 206.0]),  # TS: whitish band
    3: np.array([160.0, 58.0, 86.0]),  # IP: dark red-purple bulge
    4: np.array([122.0, 64.0, 52.0]),  # CR: brown recess
    5: np.array([92.0, 40.0, 58.0]),  # OCR: dark purple pit
    6: np.array([232.0, 208.0, 128.0]),  # OP: yellowish dome
}


@dataclass
class SynthFrame:
    """One rendered frame and its ground truth.

    ``landmarks`` holds one dict per instrument whose tip and anchor are in
    view: ``instrument_id``, ``tip`` (x, y), ``anchor`` (x, y), ``action``,
    ``active`` (exactly one ``True`` when the list is not empty).
    ``anatomy_unoccluded`` is the label map as if no instrument were there
    (for occlusion-aware augmentation and tests); not written to disk.
    """

    index: int
    image: np.ndarray  # (H, W, 3) uint8
    instruments: np.ndarray  # (H, W) uint8, 0 background, k instrument id
    anatomy: np.ndarray  # (H, W) uint8, classes 0-6, 0 under instruments
    fov: np.ndarray  # (H, W) bool
    landmarks: List[dict] = field(default_factory=list)
    anatomy_unoccluded: Optional[np.ndarray] = field(default=None, repr=False)  # labels as if no instrument


@dataclass
class _Track:
    """One instrument's trajectory over the clip (arrays of length n_frames)."""

    instrument_id: int
    action: str
    t_in: float
    base_angle: float  # direction from the FOV centre to where it enters
    depth: np.ndarray  # anchor distance from the entry point along the shaft
    sway: np.ndarray  # shaft direction offset (radians)
    opening: np.ndarray  # moving-jaw angle (radians)
    jaw_side: float  # +1 / -1: which side the moving jaw opens to
    shaft_width: float
    jaw_length: float
    tint: float  # metal brightness


def _check_size(n_frames: int, height: int, width: int, fps: Optional[float] = None) -> None:
    if int(n_frames) < 1:
        raise ConfigError(f"synthetic clip: n_frames must be >= 1, got {n_frames}")
    if int(height) < 32 or int(width) < 32:
        raise ConfigError(f"synthetic clip: height and width must be >= 32 px, got {height}x{width}")
    if fps is not None and not (float(fps) > 0):
        raise ConfigError(f"synthetic clip: fps must be > 0, got {fps}")


class EndoscopyClip:
    """Lazy synthetic endoscopy clip; see :func:`generate_endoscopy_clip`."""

    def __init__(self, seed: int, n_frames: int, height: int, width: int, fps: float,
                 absent_classes: Tuple[int, ...] = ()) -> None:
        _check_size(n_frames, height, width, fps)
        bad = [c for c in absent_classes if c not in range(1, len(ANATOMY_CLASSES))]
        if bad:
            raise ConfigError(f"synthetic clip: absent_classes must be anatomy classes 1..6, got {bad}")
        self.absent_classes = tuple(sorted(set(int(c) for c in absent_classes)))
        self.seed = int(seed)
        self.n_frames = int(n_frames)
        self.height = int(height)
        self.width = int(width)
        self.fps = float(fps)
        self.fov = FOV.centred(self.height, self.width)
        self._fov_mask = self.fov.mask()
        self.class_names = ANATOMY_CLASSES
        rng = np.random.default_rng([self.seed, 1])
        self._build_canvas(rng)
        self._build_camera(rng)
        self.tracks = self._build_tracks(rng)
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        self._xx, self._yy = xx, yy
        r = np.hypot(xx - self.fov.cx, yy - self.fov.cy) / self.fov.radius
        # Endoscope light falls off towards the rim of the field of view.
        self._vignette = np.clip(1.0 - 0.5 * r**2.2, 0.25, 1.0)

    # ------------------------------------------------------------------ canvas
    def _build_canvas(self, rng: np.random.Generator) -> None:
        s = max(self.height, self.width) / 320.0  # texture scale vs 320 px
        ch, cw = int(round(self.height * 1.9)), int(round(self.width * 1.9))
        self._canvas_shape = (ch, cw)
        yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float64)
        u, v = xx / cw, yy / ch  # normalised canvas coordinates

        warp_u = 0.012 * smooth_noise(rng, (ch, cw), 30 * s)
        warp_v = 0.012 * smooth_noise(rng, (ch, cw), 30 * s)
        uw, vw = u + warp_u, v + warp_v
        labels = np.zeros((ch, cw), np.uint8)
        dome = np.zeros((ch, cw))  # 1 at a region's centre, 0 at its edge
        for cls, cu, cv, au, av, rot in _LAYOUT:
            cu, cv = cu + rng.uniform(-0.02, 0.02), cv + rng.uniform(-0.02, 0.02)
            if cls in self.absent_classes:  # after the draws: the other regions stay where they were
                continue
            cr, sr = np.cos(rot), np.sin(rot)
            du, dv = uw - cu, vw - cv
            f = ((cr * du + sr * dv) / au) ** 2 + ((-sr * du + cr * dv) / av) ** 2
            inside = f < 1.0
            labels[inside] = cls
            dome = np.where(inside, 1.0 - f, dome)
        self._canvas_labels = labels

        # Colour: soft-edged blend of class colours over the mucosa.
        rgb = np.broadcast_to(_MUCOSA, (ch, cw, 3)).copy()
        for cls, colour in _CLASS_COLOURS.items():
            weight = ndimage.gaussian_filter((labels == cls).astype(np.float64), 1.2 * s)
            rgb += weight[..., None] * (colour - rgb)
        texture = fractal_noise(rng, (ch, cw), [24 * s, 8 * s, 2.5 * s])
        fine = smooth_noise(rng, (ch, cw), 1.0 * s)
        # Per-class texture: bone is grainy, mucosa smooth, recesses shaded darker in the middle.
        grain = np.where(np.isin(labels, (1, 2)), 0.06, 0.025)
        shade = 1.0 + 0.10 * texture + grain * fine
        shade += np.where(np.isin(labels, (3, 6)), 0.22 * dome, 0.0)  # bulges catch light
        shade -= np.where(np.isin(labels, (4, 5)), 0.3 * dome, 0.0)  # recesses are dark
        rgb *= shade[..., None]
        # Vessels: random smooth curves, dark red, on mucosa and prominences.
        vessel_mask = self._draw_vessels(rng, (ch, cw), s)
        vessel_weight = ndimage.gaussian_filter(vessel_mask.astype(np.float64), 0.8 * s)
        vessel_weight *= np.isin(labels, (0, 3, 6))
        rgb += 0.55 * vessel_weight[..., None] * (np.array([120.0, 20.0, 32.0]) - rgb)
        self._canvas_rgb = rgb.astype(np.float32)
        # Wet, shiny spots: thresholded fine noise, attached to the tissue.
        spec = smooth_noise(rng, (ch, cw), 3.0 * s)
        self._canvas_spec = np.clip((spec - 2.3) / 0.6, 0.0, 1.0).astype(np.float32)

    @staticmethod
    def _draw_vessels(rng: np.random.Generator, shape: Tuple[int, int], s: float) -> np.ndarray:
        ch, cw = shape
        lines = []
        for _ in range(14):
            p = np.array([rng.uniform(0, cw), rng.uniform(0, ch)])
            heading = rng.uniform(0, 2 * np.pi)
            pts = [p.copy()]
            for _ in range(int(rng.integers(15, 40))):
                heading += rng.normal(0, 0.25)
                p = p + 6 * s * np.array([np.cos(heading), np.sin(heading)])
                pts.append(p.copy())
            lines.append(np.array(pts))
        thin = draw_polylines(shape, lines[:10], max(1, int(round(1.5 * s))))
        thick = draw_polylines(shape, lines[10:], max(2, int(round(3 * s))))
        return thin | thick

    # ------------------------------------------------------------------ motion
    def _build_camera(self, rng: np.random.Generator) -> None:
        n = self.n_frames
        knots = max(3, n // 16 + 2)
        ch, cw = self._canvas_shape
        self._zoom = 1.15 + 0.12 * smooth_path(rng, n, knots)  # canvas px per frame px
        # Pan around a point off the centre towards one side (version 3), with
        # one excursion further towards that side's recess. Looking towards one
        # side shows one ICA prominence, optic prominence and optic-carotid
        # recess at a time: a box per class then frames one region, not both
        # sides of the sella.
        pan_x = 0.05 * cw * smooth_path(rng, n, knots)
        pan_y = 0.05 * ch * smooth_path(rng, n, knots)
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        centre_t = rng.uniform(0.3, 0.7) * (n - 1)
        width_t = max(2.0, 0.08 * n)
        t = np.arange(n)
        pan_x += side * cw * (_SIDE_OFFSET + 0.10 * np.exp(-0.5 * ((t - centre_t) / width_t) ** 2))
        self._pan = np.stack([cw / 2 + pan_x, ch / 2 + pan_y], axis=1)
        self._rot = 0.12 * smooth_path(rng, n, knots)

    def _build_tracks(self, rng: np.random.Generator) -> List[_Track]:
        n, h = self.n_frames, self.height
        actions = list(rng.permutation(ACTIONS))
        # Where instruments come in (angle from the FOV centre, y down, in units
        # of pi): lower right, lower left, right, left - one sector each.
        sectors = [_ENTRY_SECTORS[j] for j in rng.permutation(len(_ENTRY_SECTORS))]
        tracks = []
        t_in = -rng.uniform(0.0, 0.2) * n
        for k in range(3):
            duration = rng.uniform(0.5, 0.75) * n
            t_out = t_in + duration
            t = np.arange(n, dtype=np.float64)
            ramp = max(4.0, 0.12 * n)
            presence = np.clip(np.minimum((t - t_in) / ramp, (t_out - t) / ramp), 0.0, 1.0)
            presence = presence * presence * (3 - 2 * presence)  # smoothstep
            shaft_width = rng.uniform(0.05, 0.07) * h
            jaw_length = rng.uniform(0.13, 0.18) * h
            reach = rng.uniform(0.55, 0.95) * self.fov.radius
            wobble = 0.12 * self.fov.radius * smooth_path(rng, n, max(3, n // 10))
            depth = presence * (reach + jaw_length + wobble) - jaw_length - shaft_width
            action = str(actions[k % 3])
            if action == "grasp":
                period = rng.uniform(10, 18)
                opening = np.radians(18) * (1 - np.cos(2 * np.pi * (t - t_in) / period))
            elif action == "clip":
                period = rng.uniform(14, 24)
                phase = ((t - t_in) / period) % 1.0
                opening = np.radians(30) * np.clip(1.6 * (1 - phase), 0, 1)  # open, then squeeze shut
            else:  # dissect: nearly closed, small fast movements
                opening = np.radians(5) * (1 + np.sin(2 * np.pi * (t - t_in) / rng.uniform(5, 9)))
            lo, hi = sectors[k % len(sectors)]
            base_angle = np.pi * rng.uniform(lo, hi)
            tracks.append(
                _Track(
                    instrument_id=k + 1,
                    action=action,
                    t_in=float(t_in),
                    base_angle=float(base_angle),
                    depth=depth,
                    sway=0.18 * smooth_path(rng, n, max(3, n // 12)),
                    opening=opening,
                    jaw_side=1.0 if rng.uniform() < 0.5 else -1.0,
                    shaft_width=float(shaft_width),
                    jaw_length=float(jaw_length),
                    tint=float(rng.uniform(0.85, 1.1)),
                )
            )
            t_in = t_in + rng.uniform(0.3, 0.45) * n
        return tracks

    # --------------------------------------------------------------- rendering
    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[SynthFrame]:
        for i in range(self.n_frames):
            yield self.frame(i)

    def __getitem__(self, i: int) -> SynthFrame:
        return self.frame(i)

    def instrument_geometry(self, i: int) -> List[Dict[str, np.ndarray]]:
        """Per instrument at frame ``i``: entry point, anchor, tip and moving
        jaw tip (x, y), or no entry when it is fully outside the view."""
        out = []
        c = np.array([self.fov.cx, self.fov.cy])
        for tr in self.tracks:
            if tr.depth[i] <= -tr.jaw_length - tr.shaft_width + 1e-6:
                continue
            entry_dir = np.array([np.cos(tr.base_angle), np.sin(tr.base_angle)])
            entry = c + 1.02 * self.fov.radius * entry_dir
            ang = tr.base_angle + np.pi + tr.sway[i]  # pointing inwards
            d = np.array([np.cos(ang), np.sin(ang)])
            anchor = entry + tr.depth[i] * d
            tip = anchor + tr.jaw_length * d
            a2 = ang + tr.jaw_side * tr.opening[i]
            jaw2 = anchor + 0.95 * tr.jaw_length * np.array([np.cos(a2), np.sin(a2)])
            far = anchor - 4.0 * max(self.height, self.width) * d
            out.append(dict(track=tr, far=far, anchor=anchor, tip=tip, jaw2=jaw2, direction=d))
        return out

    def frame(self, i: int) -> SynthFrame:
        """Render frame ``i`` (0 <= i < len(self)) and its ground truth."""
        if not 0 <= int(i) < self.n_frames:
            raise IndexError(f"frame {i} out of range for a clip of {self.n_frames} frames")
        i = int(i)
        h, w = self.height, self.width
        xx, yy = self._xx, self._yy
        # Camera: frame pixel -> canvas coordinate.
        z, rot = self._zoom[i], self._rot[i]
        cr, sr = np.cos(rot), np.sin(rot)
        dx, dy = xx - (w - 1) / 2, yy - (h - 1) / 2
        cx = self._pan[i, 0] + z * (cr * dx - sr * dy)
        cy = self._pan[i, 1] + z * (sr * dx + cr * dy)
        coords = np.stack([cy, cx])
        rgb = np.stack(
            [ndimage.map_coordinates(self._canvas_rgb[..., c], coords, order=1, mode="reflect") for c in range(3)],
            axis=-1,
        ).astype(np.float64)
        anatomy = ndimage.map_coordinates(self._canvas_labels, coords, order=0, mode="reflect").astype(np.uint8)
        spec = ndimage.map_coordinates(self._canvas_spec, coords, order=1, mode="reflect").astype(np.float64)

        frame_rng = np.random.default_rng([self.seed, 2, i])
        light = self._vignette * (1.0 + 0.03 * np.sin(0.7 * i + self.seed))
        rgb *= light[..., None]
        rgb += (255.0 - rgb) * (0.9 * spec * self._vignette)[..., None]

        instruments = np.zeros((h, w), np.uint8)
        landmarks = []
        geometry = self.instrument_geometry(i)
        for g in geometry:
            tr = g["track"]
            shaft, across_s = tapered_capsule(xx, yy, g["far"], g["anchor"], tr.shaft_width, tr.shaft_width)
            jaw_w0, jaw_w1 = 0.62 * tr.shaft_width, 0.3 * tr.shaft_width
            jaw1, across_1 = tapered_capsule(xx, yy, g["anchor"], g["tip"], jaw_w0, jaw_w1)
            jaw2, across_2 = tapered_capsule(xx, yy, g["anchor"], g["jaw2"], jaw_w0, jaw_w1)
            joint = np.hypot(xx - g["anchor"][0], yy - g["anchor"][1]) <= 0.42 * tr.shaft_width
            # Soft shadow of the instrument on the tissue (offset down-right).
            offset = 0.12 * tr.shaft_width
            shadow = ndimage.shift((shaft | jaw1 | jaw2).astype(np.float64), (offset, offset), order=1)
            shadow = ndimage.gaussian_filter(shadow, 0.25 * tr.shaft_width)
            rgb *= (1.0 - 0.35 * shadow)[..., None]
            # Metallic cylinder shading + specular stripe along the shaft.
            for part, across, base in ((shaft, across_s, 150.0), (jaw1, across_1, 175.0), (jaw2, across_2, 165.0)):
                cyl = 0.45 + 0.55 * np.sqrt(np.clip(1 - across**2, 0, 1))
                stripe = np.exp(-(((across - 0.35) / 0.18) ** 2))
                value = tr.tint * base * cyl * light + 120.0 * stripe * light
                metal = np.stack([value, value * 1.01, value * 1.04], axis=-1)
                rgb = np.where(part[..., None], metal, rgb)
            rgb = np.where(joint[..., None], np.array([70.0, 70.0, 74.0]) * light[..., None], rgb)
            instruments[shaft | jaw1 | jaw2 | joint] = tr.instrument_id
        instruments[~self._fov_mask] = 0
        anatomy[~self._fov_mask] = 0
        anatomy_unoccluded = anatomy.copy()
        anatomy[instruments > 0] = 0  # instruments occlude the anatomy

        for g in geometry:
            tr = g["track"]
            tip, anchor = g["tip"], g["anchor"]
            if not (self.fov.contains(*tip, margin=2.0) and self.fov.contains(*anchor, margin=2.0)):
                continue
            if instruments[int(round(tip[1])), int(round(tip[0]))] != tr.instrument_id:
                continue  # tip hidden behind another instrument
            landmarks.append(
                dict(
                    instrument_id=tr.instrument_id,
                    tip=(round(float(tip[0]), 3), round(float(tip[1]), 3)),
                    anchor=(round(float(anchor[0]), 3), round(float(anchor[1]), 3)),
                    action=tr.action,
                    active=False,
                    _t_in=tr.t_in,
                )
            )
        if landmarks:
            # The active instrument is the one that came in last (it is doing the current action).
            max(landmarks, key=lambda lm: lm["_t_in"])["active"] = True
        for lm in landmarks:
            del lm["_t_in"]

        # Optics: slight blur, sensor noise, black outside the field of view.
        rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0))
        rgb += frame_rng.normal(0.0, 2.0, size=rgb.shape)
        rgb[~self._fov_mask] = 0.0
        image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return SynthFrame(i, image, instruments, anatomy, self._fov_mask.copy(), landmarks, anatomy_unoccluded)


def generate_endoscopy_clip(
    seed: int = 0, n_frames: int = 48, height: int = 240, width: int = 320, fps: float = 25.0,
    absent_classes: Tuple[int, ...] = (),
) -> EndoscopyClip:
    """A deterministic synthetic endoscopy clip (lazy: ``clip.frame(i)``
    renders frame ``i``). Same arguments give bit-identical frames.

    Raises :class:`~surgseg_core.errors.ConfigError` for sizes below 32 px,
    ``n_frames < 1`` or ``fps <= 0``. ``absent_classes``: anatomy classes
    this patient lacks (their regions are mucosa), e.g. (3, 5) for a clip
    without the rare ICA prominence and optic-carotid recess.
    """
    return EndoscopyClip(seed, n_frames, height, width, fps, absent_classes)
