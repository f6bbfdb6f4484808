"""Tool tip/anchor landmarks (Jing et al., "Dense Structural Priors for
Sparse Functional Landmark Localization in Surgical Videos").

A coarse multi-frame network predicts tip and anchor heatmaps for the centre
frame of a clip t-k..t+k; the decoded points prompt a promptable segmenter
(our SAM2, behind :class:`prior.MaskPriorProvider`) for an instrument mask
M^c; a refinement network F(I_t, H^c, M^c) gives the final heatmaps, with an
optional auxiliary mask branch. "Direct mask-augmented supervision" is the
paper's ablation.

Modules: ``annotations`` (CSV/JSON format, readers, writers), ``heatmaps``
(Gaussian and mask-augmented targets, gated loss, peak decoding), ``model``
(coarse and refinement networks), ``prior`` (mask prior providers, on-disk
prior cache), ``data`` (training dataset), ``matching`` (15 px Hungarian
matching, P/R/F1/L2), ``evaluate``, ``predict``, ``spec`` (the registered
MethodSpec and its training stages).
"""

LANDMARK_TYPES = ("tip", "anchor")  # heatmap channel order
ACTIONS = ("clip", "grasp", "dissect", "cut")  # the paper's actions (cut excluded there for lack of data)
TOOL_TYPES = ("clip applier", "grasper", "dissector", "hook", "scissors")

__all__ = ["LANDMARK_TYPES", "ACTIONS", "TOOL_TYPES"]
