"""``MethodWidget``: the base class of a method's dock widget.

A method widget gathers input, runs one core function in a worker and
shows the result as layers placed on the video. The base gives it::

    class MyWidget(MethodWidget):
        METHOD = "f2paseg"            # registered method: classes, colours, result kind
        TITLE = "Anatomy (F2PASeg)"   # prefix of its notifications

        def __init__(self, napari_viewer):
            super().__init__(napari_viewer)
            self.video_combo = self.video_picker()
            self.weights_combo = self.weights_picker(variant="f2paseg")
            self.device_combo = self.device_picker()
            self.frames = FrameRange()
            self.run_button, cancel = PushButton(text="Run"), PushButton(text="Cancel")
            self.runs = RunControl(self, [self.run_button], cancel)
            self.extend([self.video_combo, self.weights_combo, self.device_combo, *self.frames.widgets,
                         self.run_button, cancel, self.status])

        def run(self):
            video = self.video_combo.value
            first, last = self.frames.resolve(video_shape(video)[0])
            labels = self.add_labels(video, new_label_stack(...), f"{video.name} anatomy")
            self.runs.start(job, ..., description=self.TITLE, refresh=[labels],
                            on_done=lambda summary: self.set_provenance(labels, summary["provenance"]))

with a model kept between runs in ``self.models`` (``ModelCache``, used in
the job), ``self.status`` (a status line that never widens the dock) and
layer combos that follow the viewer's layers.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from magicgui.widgets import ComboBox, Container
from napari.layers import Image

from .layers import source_video_of
from .pickers import ANY_VARIANT, connect_layer_refresh, device_choices, layer_choices, weights_choices
from .results import add_labels_result, add_points_result, add_shapes_result, set_provenance
from .run import ModelCache
from .status import StatusLabel


def rgba(colour) -> Tuple[float, float, float, float]:
    """(r, g, b) 0-255 -> (r, g, b, 1.0) 0-1, what napari's colour arguments take."""
    return tuple(float(v) / 255 for v in colour[:3]) + (1.0,)


def class_colormap(colours: Dict[int, Any]):
    """A Labels colormap drawing each class in its colour (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={0: (0, 0, 0, 0), None: (0, 0, 0, 0),
                                           **{int(c): rgba(v) for c, v in colours.items()}})


class MethodWidget(Container):
    """Base of a method's dock widget (see the module docstring)."""

    #: the registered method (``surgseg_core.training.method``) the widget runs
    METHOD: str = ""
    #: the widget's name in notifications
    TITLE: str = ""

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.status = StatusLabel()
        self.models = ModelCache()
        self._spec = None
        connect_layer_refresh(napari_viewer, self)

    # ------------------------------------------------------------------ the method
    @property
    def spec(self):
        """The method's ``MethodSpec`` (loaded on first use)."""
        if self._spec is None:
            from surgseg_core.training.method import get_method

            self._spec = get_method(self.METHOD)
        return self._spec

    @property
    def class_names(self) -> Dict[int, str]:
        return dict(self.spec.class_names)

    @property
    def class_colours(self) -> Dict[int, Tuple[float, float, float, float]]:
        """{class: RGBA 0-1} from the spec's colours."""
        return {int(c): rgba(v) for c, v in self.spec.class_colours.items()}

    # ------------------------------------------------------------------ pickers
    def video_picker(self, label: str = "Video") -> ComboBox:
        return ComboBox(label=label, choices=layer_choices(self.viewer, Image))

    def layer_picker(self, label: str, layer_type, optional: bool = False) -> ComboBox:
        return ComboBox(label=label, choices=layer_choices(self.viewer, layer_type, optional))

    def weights_picker(self, label: str = "Weights", *, variant: Any = ANY_VARIANT, **kwargs: Any) -> ComboBox:
        """The registered weights of this widget's method (and ``variant``);
        ``kwargs``: those of :func:`~.pickers.weights_choices`."""
        from napari.utils.notifications import show_warning

        kwargs.setdefault("on_error", lambda message: show_warning(f"{self.TITLE}: {message}"))
        return ComboBox(label=label, choices=weights_choices(self.METHOD, variant=variant, **kwargs))

    def device_picker(self, label: str = "Device") -> ComboBox:
        return ComboBox(label=label, choices=device_choices(), value="auto")

    def precision_picker(self, label: str = "Precision") -> ComboBox:
        """SAM2's inference precision (the CLI's ``--precision``): "auto"
        takes bf16 where it pays (CUDA; the image encoder on CPUs with native bf16)."""
        from surgseg_core.precision_names import INFERENCE_PRECISION_HELP, INFERENCE_PRECISIONS

        combo = ComboBox(label=label, choices=list(INFERENCE_PRECISIONS), value="auto")
        combo.tooltip = INFERENCE_PRECISION_HELP
        return combo

    # ------------------------------------------------------------------ result layers
    def add_labels(self, source, data, name: str, **kwargs: Any):
        """A Labels result placed on ``source`` (see :func:`~.results.add_labels_result`)."""
        return add_labels_result(self.viewer, source, data, name, **kwargs)

    def add_points(self, source, name: str, **kwargs: Any):
        return add_points_result(self.viewer, source, name, **kwargs)

    def add_shapes(self, source, name: str, **kwargs: Any):
        return add_shapes_result(self.viewer, source, name, **kwargs)

    def set_provenance(self, layer, info) -> dict:
        """What produced ``layer`` (model, weights, settings), under the one provenance key."""
        return set_provenance(layer, self.METHOD, info)

    @staticmethod
    def source_of(layer) -> Optional[str]:
        return source_video_of(layer)
