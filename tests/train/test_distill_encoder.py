"""`edgevis distill --model recurrent_seqformer_tiny`: the feature loss falls; checkpoints and log are written."""

from __future__ import annotations

import json

import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.train.distill_encoder import main


def test_feature_loss_falls_and_outputs_written(tmp_path):
    out = tmp_path / "run"
    rc = main("recurrent_seqformer_tiny", ["--steps", "8", "--clip-len", "2", "--num-clips", "1", "--lr", "3e-3",
                                           "--save-every", "4", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and len(rows[0]["per_level"]) == 4
    first, last = rows[0]["feat_loss"], rows[-1]["feat_loss"]
    assert last < 0.8 * first, (first, last)
    assert (out / "step_4.pt").is_file() and (out / "step_8.pt").is_file()
    from edgevis.models.zoo import build_model

    student = build_model("recurrent_seqformer_tiny", out / "last.pt")  # an edgevis checkpoint of the student
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["model"] == "recurrent_seqformer_tiny" and ck["teacher"] == "seqformer_tiny"
    assert torch.equal(student.net.detr.transformer.encoder.levels[0].out.weight,
                       ck["state_dict"]["detr.transformer.encoder.levels.0.out.weight"])


def test_task_loss_option_runs(tmp_path):
    rc = main("recurrent_seqformer_tiny", ["--steps", "1", "--clip-len", "2", "--task-weight", "1.0",
                                           "--out", str(tmp_path / "t")])
    row = json.loads((tmp_path / "t" / "loss_log.jsonl").read_text())
    assert rc == 0 and row["task_loss"] >= 0 and row["loss"] >= row["feat_loss"]


def test_bad_teacher_and_data(tmp_path):
    with pytest.raises(EdgevisError, match="expected a SeqFormer with the attention encoder"):
        main("recurrent_seqformer_tiny", ["--teacher", "recurrent_seqformer_tiny", "--steps", "1"])
    with pytest.raises(EdgevisError, match="does not fit student"):
        main("recurrent_seqformer_tiny", ["--teacher", "seqformer_r50", "--steps", "1"])
    with pytest.raises(EdgevisError, match="no videos"):
        main("recurrent_seqformer_tiny", ["--data", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "o")])
