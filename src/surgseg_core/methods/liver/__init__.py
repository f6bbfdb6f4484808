"""Liver landmark segmentation (SLiPPA: Borgars et al., "Intraoperative
Segmentation through Deep Learning and Mask Post-processing in Laparoscopic
Liver Surgery").

Classes: 0 background, 1 silhouette, 2 ridge, 3 falciform ligament.

Modules: ``model`` (smp networks), ``data`` (L3D / P2ILF / generic readers and
the training dataset), ``class_weights`` (paper eq. 1), ``loss`` (eq. 2),
``postprocess`` (culling, joining, thinning, RDP, polylines), ``metrics``
(P, Dice, symmetric distance G of eq. 4, clDice), ``train`` (two-stage
training), ``predict``, ``evaluate``, ``export`` and ``spec`` (the registered
MethodSpec). Importing this package is cheap; torch loads with the modules
that need it.
"""

BACKGROUND, SILHOUETTE, RIDGE, LIGAMENT = 0, 1, 2, 3
NUM_CLASSES = 4
CLASS_NAMES = {SILHOUETTE: "silhouette", RIDGE: "ridge", LIGAMENT: "ligament"}
LANDMARK_CLASSES = (SILHOUETTE, RIDGE, LIGAMENT)
# Display colours (RGB 0-255) shared by the widget and the colour-label reader.
CLASS_COLOURS = {SILHOUETTE: (255, 255, 0), RIDGE: (255, 0, 0), LIGAMENT: (0, 0, 255)}

__all__ = ["BACKGROUND", "SILHOUETTE", "RIDGE", "LIGAMENT", "NUM_CLASSES", "CLASS_NAMES",
           "LANDMARK_CLASSES", "CLASS_COLOURS"]
