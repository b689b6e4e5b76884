"""Multi-frame drift at the stage level: PyTorch vs onnxruntime over a clip, free-running and teacher-forced.

The feeds are those each stage received while the PyTorch runner processed the clip
(:func:`edgevis.engines.calibration.record_feeds`: frames letterboxed with
``runtime.preprocess.prepare`` by the model's policy). For a stage with StateSpecs:

- **free-running**: each backend recycles its own state output as its next state input, as a
  deployed stream does, so any error compounds over the frames;
- **teacher-forced**: both backends get the reference (PyTorch) state each frame, so the error is
  the single-step error at that frame's real state.

Error = max abs difference per output and per state tensor per frame. Stages without state report
their outputs only (the free-running and teacher-forced series coincide). A PNG plots both series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgevis.check.tolerances import tolerance
from edgevis.runtime.backends import OrtBackend, TorchBackend


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def stage_drift(model: Any, stage: str, onnx_path: Path, calls: list[dict[str, torch.Tensor]],
                threads: int = 2) -> dict[str, Any]:
    """Per-frame errors {series: {tensor: [err per call]}} for one stage over recorded ``calls``."""
    spec = model.iospec(stage)
    ref, got = TorchBackend(model.stage(stage), spec), OrtBackend(onnx_path, threads=threads)
    pairs = [(s.name_in, s.name_out) for s in spec.states]
    names = spec.output_names
    free: dict[str, list[float]] = {n: [] for n in names}
    forced: dict[str, list[float]] = {n: [] for n in names}
    s_ref: dict[str, torch.Tensor] | None = None
    s_got: dict[str, torch.Tensor] | None = None
    for call in calls:
        recorded = {i: call[i] for i, _ in pairs}
        inputs = {n: call[n] for n in call if n not in recorded}
        o_ref = ref({**inputs, **(s_ref if s_ref is not None else recorded)})
        o_got = got({**inputs, **(s_got if s_got is not None else recorded)})
        for n in names:
            free[n].append(_err(o_ref[n], o_got[n]))
        if pairs:
            same = s_ref is None or all(torch.equal(s_ref[i], recorded[i]) for i, _ in pairs)
            t_ref = o_ref if same else ref({**inputs, **recorded})
            t_got = got({**inputs, **recorded})
            for n in names:
                forced[n].append(_err(t_ref[n], t_got[n]))
            s_ref = {i: o_ref[o].clone() for i, o in pairs}
            s_got = {i: o_got[o].clone() for i, o in pairs}
        else:
            for n in names:
                forced[n].append(free[n][-1])
    got.close()
    return {"free_running": free, "teacher_forced": forced, "states": [o for _, o in pairs]}


def drift_report(model: Any, stage: str, flavor: str, onnx_path: Path, calls: list[dict[str, torch.Tensor]],
                 plot_path: Path | None = None) -> dict[str, Any]:
    spec = model.iospec(stage)
    series = stage_drift(model, stage, onnx_path, calls)
    final, worst, tol, ok = {}, {}, {}, True
    for n in spec.output_names:
        fr, tf = series["free_running"][n], series["teacher_forced"][n]
        final[n] = fr[-1] if fr else 0.0
        worst[n] = {"free_running": max(fr, default=0.0), "teacher_forced": max(tf, default=0.0)}
        tol[n] = {"drift_final": tolerance(model.name, spec, n, "drift"), "teacher_forced": tolerance(model.name, spec, n)}
        ok &= final[n] <= tol[n]["drift_final"] and worst[n]["teacher_forced"] <= tol[n]["teacher_forced"]
    report = {"check": "drift", "stage": stage, "flavor": flavor, "frames": len(calls), "stateful": bool(spec.states),
              "final_free_running_error": final, "max_error": worst, "tolerances": tol, "pass": bool(ok),
              "per_frame": series}
    if plot_path is not None and calls:
        plot_drift(series, tol, f"{model.name}/{stage} [{flavor}] PyTorch vs onnxruntime", plot_path)
        report["plot"] = str(plot_path)
    return report


def plot_drift(series: dict[str, Any], tol: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key in zip(axes, ("free_running", "teacher_forced")):
        for i, (name, errs) in enumerate(series[key].items()):
            colour = f"C{i % 10}"
            ax.plot(range(len(errs)), [max(e, 1e-12) for e in errs], colour, label=name, lw=1)
            limit = tol[name]["drift_final" if key == "free_running" else "teacher_forced"]
            ax.axhline(limit, color=colour, ls="--", lw=0.7)
        ax.set_yscale("log")
        ax.set_xlabel("frame")
        ax.set_title(key.replace("_", "-"))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("max abs error (dashed: tolerance)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
