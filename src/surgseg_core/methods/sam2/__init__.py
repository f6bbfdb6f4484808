"""SAM 2 trained through its video memory.

Modules: ``clip`` (the differentiable T-frame clip forward and prompt
samplers), ``loss`` (SAM2's multi-step multi-mask loss), ``model`` (the
trainable module the shared trainer calls), ``data`` (clips with per-frame
object masks: synthetic clips, videos/frame folders with masks, corrections
exports), ``evaluate`` (J&F with the streaming engine), ``spec`` (the
registered ``sam2`` MethodSpec) and ``demo`` (the bundled demonstration
weights). Importing this package is cheap.
"""
