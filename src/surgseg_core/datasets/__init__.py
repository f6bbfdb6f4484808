"""Generic dataset readers (image_mask layout), corrections export and
uncertainty ranking of frames. Method-specific formats live with the method."""
from .boxes import mask_box
from .corrections import corrected_frame_reasons, default_corrected_frames, export_corrections
from .image_mask import ImageMaskFolder, find_image_mask_pairs
from .uncertainty import rank_frames_by_uncertainty

__all__ = [
    "ImageMaskFolder",
    "find_image_mask_pairs",
    "export_corrections",
    "corrected_frame_reasons",
    "default_corrected_frames",
    "rank_frames_by_uncertainty",
    "mask_box",
]
