"""Synthetic laparoscopic liver scenes with silhouette, ridge and falciform
ligament ground truth (the three landmark classes of the liver method).

The liver is a large lobe whose top lies outside the view, so its visible
lower outline is an open curve. In the liver's own unit coordinates
``q = (rho cos(theta), rho sin(theta))`` (theta = pi/2 points down the image)
its outline is ``rho = r(theta)`` (an ellipse with low harmonics); per frame a
camera (pan, zoom, roll) and breathing (scale, tilt, harmonics) map it to the
image with one affine transform. Each landmark is both drawn into the image
and returned as ground truth, so the task is learnable:

* silhouette: the visible part of the outline - the liver/background edge
  (dark red-brown liver against yellowish fat and pink peritoneum);
* ridge: a crease across the lower liver at ``rho = rho_r(theta)``, seen as a
  shading step (the face below it is lit, the face above darker) plus a thin
  specular crest;
* ligament: the falciform ligament, a pale band running from the ridge down
  to the liver's edge, i.e. between ridge and silhouette, where the liver
  method's ligament-culling prior (paper sec. 3.4) expects it.

Curves are open polylines in pixel coordinates (x right, y down), clipped to
the field of view; ridge and ligament also to the liver. Index masks draw
them ``line_width`` px thick in the order silhouette (1), ridge (2),
ligament (3): where two curves cross, the later (rarer) class wins, and ridge
and ligament pixels never extend outside the liver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from .fov import FOV
from .noise import fractal_noise, smooth_noise, smooth_path
from .raster import draw_polylines, split_inside

LIVER_CLASSES = ("background", "silhouette", "ridge", "ligament")
CURVE_NAMES = ("silhouette", "ridge", "ligament")


@dataclass
class LiverFrame:
    """One liver frame: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8
    (0 background, 1 silhouette, 2 ridge, 3 ligament), ``curves`` maps each
    class name to a list of (N, 2) float x, y polylines, ``fov`` (H, W) bool,
    ``liver`` (H, W) bool region of the liver."""

    index: int
    image: np.ndarray
    mask: np.ndarray
    curves: Dict[str, List[np.ndarray]]
    fov: np.ndarray
    liver: np.ndarray = field(repr=False, default=None)


def default_line_width(height: int, width: int) -> int:
    """Curve thickness proportional to image size: 2 % of the shorter side
    (6 px at 416 x 320), at least 3 px. The P2ILF reference draws 12 px at
    1080 p (1.1 %); thicker lines keep the synthetic task learnable at low
    resolution."""
    return max(3, int(round(0.02 * min(height, width))))


class LiverScene:
    """Lazy synthetic liver sequence; see :func:`generate_liver_scene`."""

    def __init__(self, seed: int, n_frames: int, height: int, width: int, line_width: Optional[int]) -> None:
        if int(n_frames) < 1:
            raise ConfigError(f"synthetic liver scene: n_frames must be >= 1, got {n_frames}")
        if int(height) < 32 or int(width) < 32:
            raise ConfigError(f"synthetic liver scene: height and width must be >= 32 px, got {height}x{width}")
        self.seed, self.n_frames, self.height, self.width = int(seed), int(n_frames), int(height), int(width)
        self.line_width = default_line_width(self.height, self.width) if line_width is None else int(line_width)
        if self.line_width < 1:
            raise ConfigError(f"synthetic liver scene: line_width must be >= 1, got {line_width}")
        self.class_names = LIVER_CLASSES
        h, w = self.height, self.width
        self.fov = FOV(h, w, (w - 1) / 2.0, (h - 1) / 2.0, 0.46 * float(np.hypot(h, w)))
        self._fov_mask = self.fov.mask()
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        self._xx, self._yy = xx, yy
        r = np.hypot(xx - self.fov.cx, yy - self.fov.cy) / self.fov.radius
        self._vignette = np.clip(1.05 - 0.55 * r**2, 0.3, 1.0)
        rng = np.random.default_rng([self.seed, 11])
        self._build_shape(rng)
        self._build_motion(rng)
        self._build_textures(rng)

    # ----------------------------------------------------------------- build
    def _build_shape(self, rng: np.random.Generator) -> None:
        h, w = self.height, self.width
        self._rx = rng.uniform(0.95, 1.35) * h
        self._ry = rng.uniform(0.75, 0.95) * h
        self._harm = rng.uniform(-0.04, 0.04, size=3)  # k = 2, 3, 4
        self._harm_phase = rng.uniform(0, 2 * np.pi, size=3)
        bottom = rng.uniform(0.62, 0.82) * h
        self._liver_centre = np.array([(w - 1) / 2 + rng.uniform(-0.15, 0.15) * w, bottom - self._ry])
        self._tilt = rng.uniform(-0.3, 0.3)
        # Ridge: theta range around the bottom, radius fraction with a wiggle.
        self._ridge_theta = np.sort(np.pi / 2 + rng.uniform(-0.7, 0.7, size=2)) + np.array([-0.25, 0.25])
        self._ridge_rho = rng.uniform(0.55, 0.68)
        self._ridge_wiggle = (rng.uniform(-0.03, 0.03, size=2), rng.uniform(0, 2 * np.pi, size=2))
        # Ligament: angle where it reaches the edge, slight curvature.
        self._lig_theta = np.pi / 2 + rng.uniform(-0.35, 0.35)
        self._lig_bend = rng.uniform(-0.5, 0.5)
        self._lig_end = rng.uniform(0.93, 0.99)
        self._lig_width = rng.uniform(1.6, 2.4)  # band width in line widths

    def _build_motion(self, rng: np.random.Generator) -> None:
        n, h, w = self.n_frames, self.height, self.width
        knots = max(3, n // 8 + 2)
        self._cam = np.stack([0.08 * w * smooth_path(rng, n, knots), 0.07 * h * smooth_path(rng, n, knots)], axis=1)
        self._zoom = 1.0 + 0.1 * smooth_path(rng, n, knots)
        self._roll = 0.12 * smooth_path(rng, n, knots)
        t = np.arange(n)
        period = rng.uniform(12, 24)
        self._breath = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        self._light = 1.0 + 0.06 * smooth_path(rng, n, knots)

    def _build_textures(self, rng: np.random.Generator) -> None:
        h, w = self.height, self.width
        s = max(h, w) / 416.0
        # Liver texture in the liver's unit coordinates (sampled on a 2x2 box).
        self._tex_n = 384
        self._liver_tex = fractal_noise(rng, (self._tex_n, self._tex_n), [20, 6, 2]).astype(np.float32)
        spec = smooth_noise(rng, (self._tex_n, self._tex_n), 2.5)
        self._liver_spec = np.clip((spec - 2.4) / 0.5, 0, 1).astype(np.float32)
        # Background (fat + peritoneum + bowel) in world pixel coordinates, larger than the view.
        bh, bw = int(1.6 * h), int(1.6 * w)
        self._bg_offset = np.array([(bw - w) / 2.0, (bh - h) / 2.0])
        fat = smooth_noise(rng, (bh, bw), 28 * s)
        fat_w = np.clip((fat + 0.2) * 1.5, 0, 1)[..., None]
        tissue = fractal_noise(rng, (bh, bw), [18 * s, 5 * s, 1.5 * s])
        pink = np.array([205.0, 125.0, 118.0]) * (1 + 0.12 * tissue)[..., None]
        yellow = np.array([222.0, 190.0, 115.0]) * (1 + 0.1 * tissue)[..., None]
        self._bg = (pink + fat_w * (yellow - pink)).astype(np.float32)
        self._liver_colour = np.array([128.0, 44.0, 38.0]) * rng.uniform(0.9, 1.1, size=3)
        light = rng.uniform(0, 2 * np.pi)
        self._light_dir = np.array([np.cos(light), np.sin(light)])

    # --------------------------------------------------------------- geometry
    def _affine(self, i: int):
        """(A, b): pixel = A @ q + b for liver unit coordinates q."""
        breath = self._breath[i]
        rx, ry = self._rx * (1 + 0.015 * breath), self._ry * (1 + 0.025 * breath)
        tilt = self._tilt + 0.02 * breath
        z, roll = self._zoom[i], self._roll[i]
        c_img = np.array([(self.width - 1) / 2.0, (self.height - 1) / 2.0])

        def rot(a):
            return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

        A = z * rot(roll) @ rot(tilt) @ np.diag([rx, ry])
        b = c_img + z * rot(roll) @ (self._liver_centre + self._cam[i] - c_img)
        return A, b, z, roll, c_img

    def _outline_r(self, theta: np.ndarray, i: int) -> np.ndarray:
        k = np.array([2.0, 3.0, 4.0])
        harm = self._harm * (1 + 0.15 * self._breath[i])
        return 1.0 + np.sum(harm[:, None] * np.cos(k[:, None] * theta[None, :] + self._harm_phase[:, None]), axis=0)

    def _ridge_rho_at(self, theta: np.ndarray) -> np.ndarray:
        amp, phase = self._ridge_wiggle
        return self._ridge_rho + amp[0] * np.sin(3 * theta + phase[0]) + amp[1] * np.sin(5 * theta + phase[1])

    def curves(self, i: int) -> Dict[str, List[np.ndarray]]:
        """Ground-truth polylines of frame ``i`` (pixel x, y), clipped to the
        FOV (and, for ridge and ligament, to the liver)."""
        A, b, *_ = self._affine(i)
        margin = self.line_width / 2.0 + 1.0

        def to_px(theta, rho):
            q = np.stack([rho * np.cos(theta), rho * np.sin(theta)])
            return (A @ q).T + b

        theta = np.linspace(-np.pi, np.pi, 1441)
        out = {}
        sil = to_px(theta, self._outline_r(theta, i))
        out["silhouette"] = split_inside(sil, self.fov.contains_points(sil, margin))
        t0, t1 = self._ridge_theta
        rt = np.linspace(t0, t1, max(8, int((t1 - t0) * 240)))
        ridge = to_px(rt, self._ridge_rho_at(rt) * self._outline_r(rt, i))
        out["ridge"] = split_inside(ridge, self.fov.contains_points(ridge, margin))
        # from the ridge (where the ligament meets it) to the edge
        rho0 = float(self._ridge_rho_at(np.array([self._lig_theta]))[0]) - 0.02
        # same point spacing as a full-length band (PIL leaves gaps at the
        # end of lines drawn through many sub-pixel segments)
        rho = np.linspace(rho0, self._lig_end, max(16, int(round(400 * (self._lig_end - rho0)))))
        lt = self._lig_theta + self._lig_bend * (rho - self._lig_end) ** 2
        lig = to_px(lt, rho * self._outline_r(lt, i))
        # Stay a half line width inside the liver outline.
        smin = float(np.linalg.svd(A, compute_uv=False).min())  # px per liver unit, worst direction
        inside = rho <= 1.0 - margin / (self._outline_r(lt, i) * smin)
        out["ligament"] = split_inside(lig, self.fov.contains_points(lig, margin) & inside)
        return {k: [np.round(c, 3) for c in v] for k, v in out.items()}

    # -------------------------------------------------------------- rendering
    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[LiverFrame]:
        for i in range(self.n_frames):
            yield self.frame(i)

    def __getitem__(self, i: int) -> LiverFrame:
        return self.frame(i)

    def frame(self, i: int) -> LiverFrame:
        if not 0 <= int(i) < self.n_frames:
            raise IndexError(f"frame {i} out of range for a liver scene of {self.n_frames} frames")
        i = int(i)
        h, w = self.height, self.width
        xx, yy = self._xx, self._yy
        A, b, z, roll, c_img = self._affine(i)
        Ainv = np.linalg.inv(A)
        qx = Ainv[0, 0] * (xx - b[0]) + Ainv[0, 1] * (yy - b[1])
        qy = Ainv[1, 0] * (xx - b[0]) + Ainv[1, 1] * (yy - b[1])
        rho = np.hypot(qx, qy)
        theta = np.arctan2(qy, qx)
        outline = self._outline_r(theta.ravel(), i).reshape(h, w)
        rn = rho / outline  # 1 on the outline
        liver = (rn <= 1.0) & self._fov_mask

        # Background: world texture seen through the camera.
        cr, sr = np.cos(-roll), np.sin(-roll)
        dx, dy = (xx - c_img[0]) / z, (yy - c_img[1]) / z
        wx = c_img[0] + cr * dx - sr * dy - self._cam[i, 0] + self._bg_offset[0]
        wy = c_img[1] + sr * dx + cr * dy - self._cam[i, 1] + self._bg_offset[1]
        bg = np.stack(
            [ndimage.map_coordinates(self._bg[..., c], [wy, wx], order=1, mode="reflect") for c in range(3)], axis=-1
        ).astype(np.float64)

        # Liver: texture in liver coordinates, smooth dome shading, ridge step.
        tn = self._tex_n
        tu, tv = (qx + 1.0) * (tn - 1) / 2.0, (qy + 1.0) * (tn - 1) / 2.0
        tex = ndimage.map_coordinates(self._liver_tex, [tv, tu], order=1, mode="wrap").astype(np.float64)
        spec = ndimage.map_coordinates(self._liver_spec, [tv, tu], order=1, mode="wrap").astype(np.float64)
        shade = 0.85 + 0.25 * np.clip(rn, 0, 1) ** 2 + 0.06 * tex
        t0, t1 = self._ridge_theta
        ridge_rn = self._ridge_rho_at(theta)
        # Full strength along the ridge, fading out just past its two ends.
        along = np.clip(0.5 + np.minimum(theta - t0, t1 - theta) / 0.1, 0.0, 1.0)
        below = 1.0 / (1.0 + np.exp(-(rn - ridge_rn) / 0.006))  # the lit face below the crease
        above = (1 - below) * np.exp(-np.clip(ridge_rn - rn, 0, None) / 0.12)  # shadow just above it
        shade += 0.32 * below * along - 0.12 * above * along
        shade += 0.08 * (self._light_dir[0] * qx + self._light_dir[1] * qy)  # light from one side
        crest = np.exp(-(((rn - ridge_rn) / 0.008) ** 2)) * along
        liver_rgb = self._liver_colour * shade[..., None]
        liver_rgb += (255.0 - liver_rgb) * (0.28 * crest + 0.8 * spec)[..., None]

        curves = self.curves(i)
        lig_band = draw_polylines((h, w), curves["ligament"], max(2, int(round(self._lig_width * self.line_width))))
        band = ndimage.gaussian_filter(lig_band.astype(np.float64), 0.25 * self.line_width)
        liver_rgb += band[..., None] * (np.array([236.0, 222.0, 196.0]) * (1 + 0.05 * tex[..., None]) - liver_rgb) * 0.9

        soft = ndimage.gaussian_filter((rn <= 1.0).astype(np.float64), 0.7)
        rgb = bg + soft[..., None] * (liver_rgb - bg)
        rgb *= (self._vignette * self._light[i])[..., None]
        rgb = ndimage.gaussian_filter(rgb, (0.5, 0.5, 0))
        rgb += np.random.default_rng([self.seed, 12, i]).normal(0.0, 2.0, size=rgb.shape)
        rgb[~self._fov_mask] = 0.0
        image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

        mask = np.zeros((h, w), np.uint8)
        for cls, name in enumerate(CURVE_NAMES, start=1):
            drawn = draw_polylines((h, w), curves[name], self.line_width)
            if name != "silhouette":
                drawn &= liver
            mask[drawn] = cls
        mask[~self._fov_mask] = 0
        return LiverFrame(i, image, mask, curves, self._fov_mask.copy(), liver)


def generate_liver_scene(
    seed: int = 0, n_frames: int = 40, height: int = 320, width: int = 416, *, line_width: Optional[int] = None
) -> LiverScene:
    """A deterministic synthetic liver sequence (lazy: ``scene.frame(i)``).

    ``line_width`` is the mask thickness of the curves in pixels (default:
    :func:`default_line_width`). Camera, breathing and lighting change from
    frame to frame; liver shape, pose, ridge and ligament change with the seed.
    """
    return LiverScene(seed, n_frames, height, width, line_width)
