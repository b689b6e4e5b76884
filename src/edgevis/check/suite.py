"""`edgevis check --model M`: the three accuracy checks, per flavor, with JSON reports and a summary.

1. single-step parity through polygraphy (:mod:`.polygraphy`), on real recorded feeds, which also
   writes polygraphy JSON inputs/outputs for checking an engine on a Jetson;
2. multi-frame drift per stage (:mod:`.drift`), free-running and teacher-forced, with PNG plots;
3. task-level agreement (:func:`edgevis.check.runner_parity.run_check`): mask IoU of matched
   instances and track-id agreement between two StreamRunners.

Reports: ``<out>/<model>.<stage>.<flavor>.single.json``, ``...drift.json`` + ``.drift.png``,
``<out>/<model>.<flavor>.json`` (agreement), ``<out>/<model>.summary.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgevis.check.drift import drift_report
from edgevis.check.polygraphy import pick_feeds, single_step
from edgevis.check.runner_parity import check_clip, run_check
from edgevis.engines.calibration import record_feeds
from edgevis.models.zoo import build_model
from edgevis.runtime.pipeline import ensure_onnx

CHECKS = ("single", "drift", "agreement")


def _dump(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def run_checks(model_name: str, *, weights: str | None = None, frames: int = 300,
               out_dir: Path = Path("reports/check"), flavors: list[str] | tuple[str, ...] = ("portable", "trt"),
               onnx_dir: Path | None = None, save_inputs: Path | None = None, save_outputs: Path | None = None,
               checks: tuple[str, ...] = CHECKS, agreement_frames: int = 50) -> bool:
    """Run the checks; prints one line per check and returns True when all pass."""
    out_dir = Path(out_dir)
    onnx_root = Path(onnx_dir) if onnx_dir else out_dir / "onnx"
    model = build_model(model_name, weights)
    hw = model.policy().input_hw(model.stages[0])
    # Drift needs state to accumulate: a model whose stages carry no StateSpec (its state lives in the
    # policy, e.g. MobileInst's kernels) cannot drift inside a graph, so its stage checks use the first
    # `agreement_frames` frames, and the long run is spent where error can compound.
    stateful = any(model.iospec(s).states for s in model.stages)
    n_stage = frames if stateful else min(frames, agreement_frames)
    calls = record_feeds(model, check_clip(model_name, n_stage, hw).frames) if {"single", "drift"} & set(checks) else {}
    lines: list[str] = []
    ok_all = True
    for flavor in flavors:
        for stage in model.stages if calls else ():
            onnx_path = ensure_onnx(model, stage, flavor, onnx_root / flavor)
            tag = f"{model_name}/{stage} [{flavor}]"
            base = out_dir / f"{model_name}.{stage}.{flavor}"
            if "single" in checks:
                name = f"{model_name}.{stage}.{flavor}"
                rep = single_step(model, stage, onnx_path, pick_feeds(calls[stage]),
                                  (save_inputs or out_dir / "polygraphy") / f"{name}.inputs.json",
                                  (save_outputs or out_dir / "polygraphy") / f"{name}.outputs.json")
                _dump(Path(f"{base}.single.json"), rep)
                worst = max((e for d in rep["max_abs_error"].values() for e in d.values()), default=0.0)
                lines.append(f"{'PASS' if rep['pass'] else 'FAIL'} single-step {tag}: {' vs '.join(rep['runners'])}, "
                             f"{rep['iterations']} real feeds, max abs err {worst:.2e} -> {base}.single.json")
                lines.append(f"     on the Jetson: {rep['polygraphy_command']}")
                ok_all &= rep["pass"]
            if "drift" in checks:
                rep = drift_report(model, stage, flavor, onnx_path, calls[stage], Path(f"{base}.drift.png"))
                _dump(Path(f"{base}.drift.json"), rep)
                fin = max(rep["final_free_running_error"].values(), default=0.0)
                tf = max((v["teacher_forced"] for v in rep["max_error"].values()), default=0.0)
                kind = "free-running" if rep["stateful"] else "stateless"
                lines.append(f"{'PASS' if rep['pass'] else 'FAIL'} drift {tag}: {rep['frames']} frames {kind}, error "
                             f"at last frame {fin:.2e}, teacher-forced max {tf:.2e} -> {base}.drift.png")
                ok_all &= rep["pass"]
    if "agreement" in checks:  # the PyTorch runner's results are computed once for every flavor
        run_check(model_name, weights=weights, frames=agreement_frames, out_dir=out_dir, flavors=list(flavors),
                  onnx_dir=onnx_root, verbose=False)
        for flavor in flavors:
            rep = json.loads((out_dir / f"{model_name}.{flavor}.json").read_text())
            lines.append(f"{'PASS' if rep['pass'] else 'FAIL'} agreement {model_name} [{flavor}]: mean mask IoU "
                         f"{rep['mean_mask_iou']:.4f}, track-id agreement {rep['mean_track_id_agreement']:.4f} "
                         f"over {agreement_frames} frames -> {out_dir / f'{model_name}.{flavor}.json'}")
            ok_all &= rep["pass"]
    verdict = f"{'PASS' if ok_all else 'FAIL'} {model_name}: {sum(ln.startswith('PASS') for ln in lines)}/" \
              f"{sum(ln.startswith(('PASS', 'FAIL')) for ln in lines)} checks hold"
    summary = "\n".join([*lines, verdict]) + "\n"
    (out_dir / f"{model_name}.summary.txt").write_text(summary)
    print(summary, end="")
    return ok_all
