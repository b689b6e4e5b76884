from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevis.runtime.preprocess import LazyMasks, crop_to_source, letterbox_geometry, masks_to_source, prepare
from edgevis.runtime.results import FrameResult
from edgevis.spec import Preprocess


def test_letterbox_keeps_aspect_and_pads_bottom_right():
    lb = letterbox_geometry((480, 640), (256, 448))
    assert lb.resized_hw == (256, 341)  # scale 256/480 bounds it
    x, lb2 = prepare(np.full((480, 640, 3), 200, np.uint8), (256, 448), Preprocess(size_multiple=4))
    assert x.shape == (1, 256, 448, 3) and x.dtype == torch.uint8 and lb2 == lb
    assert (x[0, :, :341] == 200).all() and not (x[0, :, 341:] == 200).any()


@pytest.mark.parametrize("src_hw", [(64, 112), (120, 160), (50, 300)])
def test_crop_to_source_is_bilinear_half_pixel(src_hw):
    """Same numbers as torch's bilinear (align_corners=False) on the crop that covers the source."""
    maps = torch.randn(4, 16, 28)  # model maps for a (64, 112) input
    lb = letterbox_geometry(src_hw, (64, 112))
    out = crop_to_source(maps, lb)
    assert out.shape == (4, *src_hw) and out.dtype == np.float32
    ch = -(-lb.resized_hw[0] * 16 // 64)
    cw = -(-lb.resized_hw[1] * 28 // 112)
    ref = F.interpolate(maps[None, :, :ch, :cw], size=src_hw, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


def test_masks_to_source_thresholds_the_upsampled_logits():
    maps = torch.randn(3, 16, 28)
    lb = letterbox_geometry((64, 112), (64, 112))
    masks = masks_to_source(maps, lb, threshold=0.25)
    assert masks.dtype == bool and masks.shape == (3, 64, 112)
    np.testing.assert_array_equal(masks, crop_to_source(maps, lb) > 0.25)
    assert masks_to_source(maps[:0], lb).shape == (0, 64, 112)


@pytest.mark.parametrize("rows", [None, np.array([2, 0]), np.array([True, False, True])])
def test_lazy_masks_materialise_on_first_access(rows):
    maps = torch.randn(3, 16, 28)
    lb = letterbox_geometry((80, 140), (64, 112))
    lazy = LazyMasks(maps, lb, 0.1, rows=rows)
    picked = maps if rows is None else maps[torch.as_tensor(np.flatnonzero(rows) if rows.dtype == bool else rows)]
    n = len(picked)
    res = FrameResult(0, 0, lazy, np.arange(n), np.arange(n), np.ones(n, np.float32))
    assert not res.masks_ready and res.num_instances == n and res.source_hw == (80, 140)
    masks = res.masks
    assert res.masks_ready and res.masks is masks  # materialised once, then kept
    np.testing.assert_array_equal(masks, masks_to_source(picked, lb, 0.1))
    assert res.to_json_dict()["instances"][0]["segmentation"]["size"] == [80, 140]
