from __future__ import annotations

import json

import numpy as np

from edgevis.check.agreement import Agreement
from edgevis.check.runner_parity import run_check
from edgevis.runtime.results import FrameResult


def _res(ids, masks):
    n = len(ids)
    return FrameResult(stream=0, index=0, masks=np.asarray(masks, bool).reshape(n, 2, 2),
                       track_ids=np.asarray(ids, np.int64), class_ids=np.ones(n, np.int64),
                       scores=np.ones(n, np.float32), source_hw=(2, 2))


def test_agreement_known_values():
    a = Agreement()
    a.add(_res([1, 2], [[1, 1, 0, 0], [0, 0, 1, 1]]), _res([1, 2], [[1, 0, 0, 0], [0, 0, 1, 1]]))
    assert a.frame_iou == [0.75] and a.id_agreement == [1.0]  # IoU 0.5 and 1.0
    a.add(_res([1], [[1, 0, 0, 0]]), _res([3], [[1, 0, 0, 0]]))
    assert a.frame_iou[-1] == 0.0 and a.id_agreement[-1] == 0.0
    a.add(_res([], []), _res([], []))
    assert a.frame_iou[-1] == 1.0


def test_check_toy_both_flavors(tmp_path):
    assert run_check("toy_convgru", frames=6, out_dir=tmp_path)
    rep = json.loads((tmp_path / "toy_convgru.trt.json").read_text())
    assert rep["pass"] and rep["mean_mask_iou"] >= 0.99 and len(rep["per_frame_iou"]) == 6
