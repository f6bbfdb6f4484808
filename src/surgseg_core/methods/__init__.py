"""The methods. Each lives in its own small package and registers a
:class:`surgseg_core.training.method.MethodSpec` so that ``surgseg train
METHOD``, ``surgseg evaluate METHOD``, ``surgseg predict METHOD`` and the napari
training widget all reach it through one registry."""
