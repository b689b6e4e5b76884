"""Synthetic VIS/VOS clips with ground truth, YouTube-VIS and DAVIS layouts, and their metrics."""

from edgevis.data.davis import DAVIS_PALETTE, read_davis, read_palette_png, write_davis, write_palette_png
from edgevis.data.metrics import boundary_f, davis_j_and_f, mask_iou_matrix, region_j, ytvis_map
from edgevis.data.rle import rle_area, rle_decode, rle_encode
from edgevis.data.synthetic import (
    CATEGORIES,
    SyntheticClip,
    labels_to_masks,
    make_clip,
    make_dataset,
    masks_to_labels,
)
from edgevis.data.ytvis import (
    prediction_from_masks,
    read_ytvis,
    read_ytvis_results,
    write_ytvis,
    write_ytvis_results,
)

__all__ = [
    "CATEGORIES",
    "DAVIS_PALETTE",
    "SyntheticClip",
    "boundary_f",
    "davis_j_and_f",
    "labels_to_masks",
    "make_clip",
    "make_dataset",
    "mask_iou_matrix",
    "masks_to_labels",
    "prediction_from_masks",
    "read_davis",
    "read_palette_png",
    "read_ytvis",
    "read_ytvis_results",
    "region_j",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "write_davis",
    "write_palette_png",
    "write_ytvis",
    "write_ytvis_results",
    "ytvis_map",
]
