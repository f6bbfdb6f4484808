"""The endoscope's circular field of view (FOV): the image outside it is black
and every ground-truth mask is zero there."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FOV:
    """A circle (centre ``cx, cy`` and ``radius`` in pixels, x right, y down)
    on an image of ``height`` x ``width``. The circle may extend past the image
    border (the FOV is then cut by it, as in many laparoscopes)."""

    height: int
    width: int
    cx: float
    cy: float
    radius: float

    @classmethod
    def centred(cls, height: int, width: int, radius_factor: float = 0.52) -> "FOV":
        """A centred circle of ``radius_factor * height`` (0.52: touches and
        slightly crops the top and bottom border, like endonasal endoscopes)."""
        return cls(int(height), int(width), (width - 1) / 2.0, (height - 1) / 2.0, radius_factor * height)

    def mask(self) -> np.ndarray:
        """Boolean (height, width) array, True inside the field of view."""
        yy, xx = np.mgrid[0 : self.height, 0 : self.width]
        return (xx - self.cx) ** 2 + (yy - self.cy) ** 2 <= self.radius**2

    def contains(self, x: float, y: float, margin: float = 0.0) -> bool:
        """True if the point lies inside the FOV circle and the image, at least
        ``margin`` pixels from both edges."""
        inside_circle = (x - self.cx) ** 2 + (y - self.cy) ** 2 <= (self.radius - margin) ** 2
        inside_image = margin <= x <= self.width - 1 - margin and margin <= y <= self.height - 1 - margin
        return bool(inside_circle and inside_image)

    def contains_points(self, xy: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Vectorised :meth:`contains` for an (N, 2) array of x, y points."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        inside_circle = (x - self.cx) ** 2 + (y - self.cy) ** 2 <= (self.radius - margin) ** 2
        inside_image = (x >= margin) & (x <= self.width - 1 - margin) & (y >= margin) & (y <= self.height - 1 - margin)
        return inside_circle & inside_image
