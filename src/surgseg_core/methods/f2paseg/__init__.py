"""F2PASeg: pituitary anatomy video segmentation (Chen et al., "F2PASeg:
Feature Fusion for Pituitary Anatomy Segmentation in Endoscopic Surgery").

SAM2 with a residual feature-fusion module (with a LoRA branch) in the mask
decoder and prompt partitioning in the memory bank; each anatomy class is
one tracked object, merged into one label map.

Modules: ``model`` (the "f2paseg" SAM2 variant, parameter report,
freezing), ``classes`` (class sets: PAS, CholecSeg8k; merging per-class
logits), ``data`` (PAS / generic / CholecSeg8k readers, box prompts),
``augment`` (instrument overlay, paper sec. 2.3), ``spec`` (config keys with
the paper's setup as defaults), ``train`` (``surgseg train f2paseg`` on the
SAM2 clip training), ``evaluate`` (Table 2: Dice / IoU per class, FPS, plain
SAM2 alongside). Importing this package is cheap: torch and SAM2 load with
``model`` and ``train``.
"""
