"""The MSDA micro-benchmark runs end to end on a tiny size and writes its JSON row (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

from edgevis.bench import msda


def test_bench_writes_row_with_machine_and_parity(tmp_path: Path, capsys) -> None:
    out = tmp_path / "msda.jsonl"
    assert msda.main(["--sizes", "tiny", "--warmup", "0", "--iters", "1", "--no-gpu", "--report", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["bench"] == "msda" and row["machine"]["cores"] >= 1 and row["machine"]["torch"]
    (cpu,) = row["cpu"]
    assert cpu["size"] == "tiny"
    assert cpu["torch_reference_ms"] > 0 and cpu["ort_portable_ms"] > 0
    assert cpu["portable_max_abs_err"] <= 1e-5
    assert "| tiny |" in capsys.readouterr().out


def test_bench_sizes_are_seqformer_at_360x640() -> None:
    levels = msda.SIZES["decoder"]["shapes"]
    assert levels == ((45, 80), (23, 40), (12, 20), (6, 10))
    assert msda.SIZES["encoder"]["Q"] == sum(h * w for h, w in levels) == 4820
    assert (msda.SIZES["decoder"]["B"], msda.SIZES["decoder"]["Q"]) == (5, 300)
