"""Dock widget "Anatomy (F2PASeg)": a box (or clicks) per anatomy class on
key frames -> a class label map on every frame, with F2PASeg (SAM2 with
feature fusion and prompt partitioning, ``surgseg_core.methods.f2paseg``).

Each class is one tracked object whose id is the class id, so the merged
label map of the tracking core (``track_video``: highest logit among the
objects above threshold, background elsewhere) is the class map. Prompt
partitioning is part of the F2PASeg model (the engine reads it from the
model), so propagation here is the same code path as ``surgseg track`` with
F2PASeg weights.

Everything but the classes and the model is the shared tracking widget
(:class:`~.base.TrackingWidget`): boxes and clicks, Propagate
(forward, backward, both; a frame range) in a worker into a sparse on-disk
label stack that napari shows lazily, "Re-propagate from this frame" after a
brush correction, checked frames, undo of a model run, cancel. This widget
adds the class set (PAS, CholecSeg8k) and class picker whose colours are the
class table's (boxes, clicks and the Labels layer), F2PASeg weights only
(registry entries of method "f2paseg"; ``surgseg-demo-f2paseg`` by default
when registered), and the class set in the layer's state and provenance.
Re-propagation resumes in the direction of travel: with "both" it goes
forward from the corrected frame, leaving the frames before it untouched.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Labels, Points, Shapes

from surgseg_core.errors import SurgsegError
from surgseg_core.methods.f2paseg.classes import CLASS_SETS, ClassSet, get_class_set
from surgseg_core.sam2_engine.build import TINY_CONFIG

from .base import ModelCache, TrackingWidget, class_colormap, device_value, rgba
from .base.tracking import POSITIVE_COLORS

TITLE = "Anatomy (F2PASeg)"
RANDOM_TINY = "random tiny F2PASeg (testing)"
#: the demo weights, chosen by default when registered
DEMO_WEIGHTS = "surgseg-demo-f2paseg"
STATE_KEY = "f2paseg_anatomy"


def _weights_item(entry) -> Tuple[str, Tuple[str, Optional[str]]]:
    """(label, (registered name, None)) of a registry entry of method f2paseg."""
    return (entry.name if entry.present else f"{entry.name} (file missing)"), (entry.name, None)


def _build(name: str, checkpoint: Optional[str], device: Optional[str]):
    """The F2PASeg network of a weights choice: random tiny, or registered
    weights that must build the F2PASeg variant."""
    if name == RANDOM_TINY:
        from surgseg_core.methods.f2paseg.model import build_f2paseg

        return build_f2paseg(TINY_CONFIG, None, device=device, seed=0)
    from surgseg_core.sam2_engine.track import load_tracking_model

    net = load_tracking_model(name, checkpoint, device=device)
    if getattr(net, "surgseg_variant", None) != "f2paseg":
        raise SurgsegError(f"weights {name!r} built a {getattr(net, 'surgseg_variant', None) or 'plain SAM2'} "
                           "model, not F2PASeg")
    return net


def _model(cache: ModelCache, name: str, checkpoint: Optional[str], device: Optional[str]):
    """The model built once per (weights, device)."""
    return cache.get((name, checkpoint, device), lambda: _build(name, checkpoint, device))


def class_choices(class_set: ClassSet) -> List[Tuple[str, int]]:
    """(label, class id) items of a class set: "1 SF: sella floor"."""
    return [(f"{c.id} {c.abbrev}: {c.name}", c.id) for c in class_set.classes]


def id_colormap(colours: Dict[int, Any]):
    """(colormap, contrast limits) giving integer value ``v`` the colour
    ``colours[v]`` (RGBA 0-1; white where none): a stepwise napari Colormap
    over ``(-0.5, n - 0.5)``. Shapes edges coloured by an integer feature
    take only a colormap (their colour cycles map no values to colours)."""
    from napari.utils.colormaps import Colormap

    n = max(colours) + 1
    table = [tuple(colours.get(v, (1.0, 1.0, 1.0, 1.0))) for v in range(n)]
    cmap = Colormap(colors=table, controls=np.linspace(0.0, 1.0, n + 1), interpolation="zero", name="class colours")
    return cmap, (-0.5, n - 0.5)


def colour_boxes_by_class(layer: Shapes, colours: Dict[int, Any]) -> None:
    """Draw each rectangle of ``layer`` in the colour of its ``obj_id`` (class)."""
    import warnings

    cmap, limits = id_colormap(colours)
    if layer.edge_color_mode != "colormap":
        with warnings.catch_warnings():  # napari guesses "categorical" for few integers; we say colormap below
            warnings.simplefilter("ignore", RuntimeWarning)
            layer.edge_color = "obj_id"
        layer.edge_color_mode = "colormap"
    layer.edge_colormap = cmap
    layer.edge_contrast_limits = limits
    layer.refresh_colors()


class AnatomyWidget(TrackingWidget):
    METHOD = "f2paseg"
    TITLE = TITLE
    STATE_KEY = STATE_KEY
    RESULT_NAME = "anatomy"
    LAYER_PREFIX = "anatomy"
    TRACK_TEXT = "Propagate"
    RUNNING_TEXT = "propagating"
    DONE_VERB = "propagated"
    TRACK_DESCRIPTION = "Propagating with F2PASeg"
    REFINE_DESCRIPTION = "Re-propagating with F2PASeg"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.video_combo = self.video_picker()
        prompt_controls = self.prompt_controls(boxes=True)
        self.prompts_combo.tooltip = "clicks with obj_id (class) / positive features ('New prompt layer')"
        self.model_combo = self.weights_picker("Weights", item=_weights_item,
                                               after=[(RANDOM_TINY, (RANDOM_TINY, None))])
        self.model_combo.tooltip = (f"F2PASeg weights from the registry (method f2paseg; 'surgseg weights list "
                                    f"--method f2paseg'); {RANDOM_TINY}: untrained, for testing only")
        self.tracking_controls()
        self.direction_combo.tooltip = ("Propagate: from the earliest box forward, backward, or both; "
                                        "Re-propagate resumes in the direction of travel (both: forward)")
        self.layout(prompt_controls, self.model_combo)
        self.runs = self.run_control([])
        self.class_set_combo.changed.connect(self._class_set_changed)
        self.class_combo.changed.connect(self._apply_defaults)
        if DEMO_WEIGHTS in [value[0] for value in self.model_combo.choices]:
            self.model_combo.value = (DEMO_WEIGHTS, None)

    def model_loader(self) -> Callable[[], Any]:
        name, checkpoint = self.model_combo.value
        return functools.partial(_model, self.models, name, checkpoint, device_value(self.device_combo.value))

    # ------------------------------------------------------------------ classes
    def class_set(self) -> ClassSet:
        """The class set chosen (its class ids are the objects' label values)."""
        return get_class_set(self.class_set_combo.value)

    @property
    def class_colours(self) -> Dict[int, Tuple[float, float, float, float]]:
        """{class id: RGBA 0-1} of the chosen class set (not the method spec's)."""
        return {c: rgba(v) for c, v in self.class_set().colours().items()}

    def object_widgets(self) -> list:
        self.class_set_combo = ComboBox(
            label="Class set", value="pas",
            choices=[(f"{cs.name} ({cs.describe()})", cs.name) for cs in CLASS_SETS.values()])
        self.class_set_combo.tooltip = "the classes the weights were trained on (pas: pituitary anatomy)"
        self.class_combo = ComboBox(label="Class", choices=class_choices(get_class_set("pas")))
        self.class_combo.tooltip = "the class of the next box or click (its label value and colour)"
        self._paint_swatches()
        return [self.class_set_combo, self.class_combo]

    def _paint_swatches(self) -> None:
        """A colour square beside each class in the class combo (the class table's colour)."""
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QColor, QIcon, QPixmap

        box = self.class_combo.native
        colours = get_class_set(self.class_set_combo.value).colours()
        for i in range(box.count()):
            pixmap = QPixmap(12, 12)
            pixmap.fill(QColor(*colours.get(int(box.itemData(i)), (255, 255, 255))))
            box.setItemData(i, QIcon(pixmap), Qt.ItemDataRole.DecorationRole)

    def _class_set_changed(self, *_: Any) -> None:
        self.class_combo.choices = class_choices(self.class_set())
        self._paint_swatches()
        self._style_prompt_layers()
        self._apply_defaults()

    def _style_prompt_layers(self) -> None:
        points, boxes = self.prompts_combo.value, self.boxes_combo.value
        if isinstance(points, Points) and "obj_id" in points.features:
            points.face_color_cycle = self.class_colours
            points.refresh_colors(update_color_mapping=True)
        if isinstance(boxes, Shapes) and "obj_id" in boxes.features:
            colour_boxes_by_class(boxes, self.class_colours)

    # ------------------------------------------------------------------ the base's hooks
    def current_obj_id(self) -> int:
        return int(self.class_combo.value)

    def check_obj_ids(self, ids, where: str) -> None:
        cs = self.class_set()
        unknown = [int(i) for i in ids if int(i) not in cs.ids]
        if unknown:
            raise SurgsegError(f"{where}: label(s) {unknown} are not classes of the class set "
                               f"{cs.name!r} ({cs.describe()})")

    def describe_objects(self, ids) -> str:
        known = {c.id: c.abbrev for c in self.class_set().classes}
        return "class(es) " + (", ".join(known.get(int(i), str(i)) for i in ids) or "none")

    def points_style(self) -> dict:
        # fill: the class; rim: positive (green) or negative (magenta) click
        return {"face_color": "obj_id", "face_color_cycle": self.class_colours,
                "border_color": "positive", "border_color_cycle": POSITIVE_COLORS, "border_width": 0.2}

    def boxes_style(self) -> dict:
        return {}

    def style_boxes(self, layer: Shapes) -> None:
        colour_boxes_by_class(layer, self.class_colours)

    def labels_style(self) -> dict:
        return {"colormap": class_colormap(self.class_set().colours())}

    def prepare_result(self, layer: Labels) -> None:
        layer.colormap = class_colormap(self.class_set().colours())

    def fits(self, layer: Labels) -> bool:
        return (layer.metadata.get(STATE_KEY) or {}).get("class_set") == self.class_set().name

    def state_extra(self) -> dict:
        return {"class_set": self.class_set().name}

    def provenance(self, summary: dict) -> dict:
        cs = self.class_set()
        classes = {str(c.id): {"abbrev": c.abbrev, "name": c.name, "colour": list(c.colour)} for c in cs.classes}
        return {**summary["provenance"], "class_set": {"name": cs.name, "classes": classes}}

    def repropagation_direction(self) -> str:
        direction = self.direction_combo.value
        return "forward" if direction == "both" else direction
