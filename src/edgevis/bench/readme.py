"""Regenerate README's "Performance" section from the latest benchmark rows.

``python -m edgevis.bench.readme`` (run by ``make bench``) reads every ``reports/bench/*.jsonl`` row
written by ``edgevis bench``, keeps the newest run per (machine, model, backend, precision) and
rewrites the block between the markers below. Each row names the machine it came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

START = "<!-- performance:start -->"
END = "<!-- performance:end -->"

PAPER_FIGURES = (
    "For scale, the papers' own figures (their hardware, their trained models; not reproduced here): "
    "Recurrent SeqFormer runs about **2x** faster than SeqFormer (CAIP 2023); MobileInst takes **176 ms** per "
    "frame on one Snapdragon 778G CPU core (AAAI 2024); SpVOS saves up to **42%** of FLOPs (IEEE TIP 2023)."
)


def latest_rows(bench_dir: Path) -> list[dict[str, Any]]:
    """The rows of the latest full-length run per machine, model, precision and streams: every backend of
    that one run (so a table's rows and their speedups come from the same run). Runs shorter than the
    model's default length (``--quick``, a short ``--frames``, the acceptance checks' smoke runs) are
    left out."""
    from edgevis.bench.report import DEFAULT_FRAMES

    runs: dict[tuple, dict[str, Any]] = {}
    for path in sorted(bench_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "fps" not in row or "model" not in row or "backend" not in row:
                continue  # rows of micro-benchmarks (kernels, drift) live in their own files
            if row.get("frames", 0) < DEFAULT_FRAMES.get(row["model"], 100):
                continue
            m = row.get("machine", {})
            key = (m.get("cpu"), m.get("gpu"), row["model"], row.get("precision"), row.get("streams"))
            stamp = row.get("timestamp", "")
            run = runs.setdefault(key, {"stamp": stamp, "rows": {}})
            if stamp > run["stamp"]:
                run["stamp"], run["rows"] = stamp, {}
            if stamp == run["stamp"]:
                run["rows"][row["backend"]] = row
    rows = [r for run in runs.values() for r in run["rows"].values()]
    return sorted(rows, key=lambda r: (r["model"], r["machine"].get("cpu", ""), r["backend"]))


def fmt_sparsity(row: Any) -> tuple[str, str]:
    """The sparse-model cells (achieved sparsity, FLOPs saved per frame); "-" for dense models and for rows
    whose gate decisions were not read (every backend but eager PyTorch)."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k, None)
    sp, saved, pct = get("sparsity"), get("flops_saved_gflops"), get("flops_saved_pct")
    if sp is None or saved is None:
        return "-", "-"
    return f"{100 * sp:.1f}%", f"{saved:.2f} GFLOPs" + ("" if pct is None else f" ({pct:.1f}%)")


def render(rows: list[dict[str, Any]]) -> str:
    lines = [START, "", "Reproduce with `make bench` (all full-size models, every backend present) or "
             "`edgevis bench --model M --backends torch,ort`. Each model's rows come from its latest run of the default "
             "length (quick runs are left out). Speedup is against PyTorch eager on the same machine, which folds its "
             "frozen BatchNorms into the convs as the engines do. "
             "Sparsity (share of the sparse convs' work the gate skips) and FLOPs saved are read from the eager "
             "PyTorch run of sparse models; '-' elsewhere. The full-size models run with untrained weights (no "
             "checkpoint exists for them), so their speed is real but a full-size SpVOS's sparsity only shows what "
             "the gate does on untrained features: it is not an accuracy-preserving setting.", ""]
    if not rows:
        lines += ["No benchmark has been run yet.", ""]
    else:
        lines += ["| model | resolution | backend | precision | FPS | speedup vs torch | p50 / p99 ms | runner overhead | "
                  "masks ms | sparsity | FLOPs saved/frame | machine |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r["machine"]
            where = f"{m.get('cpu')} ({m.get('cores')} cores)" + (f", {m['gpu']}" if m.get("gpu") else "")
            sp = r.get("speedup_vs_torch")
            masks = "" if r.get("masks_ms") is None else f"{r['masks_ms']:.2f}"  # rows from before masks were timed
            lines.append(f"| {r['model']} | {r['resolution']} | {r['backend']} | {r.get('precision', 'fp32')} | "
                         f"{r['fps']:.1f} | {'' if sp is None else f'{sp:.2f}x'} | {r['latency_p50_ms']:.1f} / "
                         f"{r['latency_p99_ms']:.1f} | {r['runner_overhead_pct']:.1f}% | "
                         f"{masks} | {' | '.join(fmt_sparsity(r))} | {where}, {r.get('threads')} threads |")
        lines.append("")
    lines += [PAPER_FIGURES, "", END]
    return "\n".join(lines)


def update_readme(readme: Path, bench_dir: Path) -> bool:
    text = readme.read_text()
    block = render(latest_rows(bench_dir))
    if START in text and END in text:
        a, b = text.index(START), text.index(END) + len(END)
        new = text[:a] + block + text[b:]
    else:
        anchor = "## What is verified where"
        section = "## Performance\n\n" + block + "\n\n"
        new = text.replace(anchor, section + anchor) if anchor in text else text + "\n" + section
    readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default="README.md")
    p.add_argument("--bench-dir", default="reports/bench")
    a = p.parse_args(argv)
    changed = update_readme(Path(a.readme), Path(a.bench_dir))
    print(f"{a.readme}: performance section {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
