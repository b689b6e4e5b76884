"""ONNX for onnxruntime on ARM CPUs: portable graphs, offline-optimised, session settings, INT8 QDQ.

``edgevis export --model M --target arm --out DIR`` writes, per stage, into ``DIR/<model>/``:

- ``<stage>.arm.onnx``: the portable-flavor graph (parity-checked against PyTorch) after onnxruntime's
  offline graph optimisation at a hardware-independent level (``basic``: constant folding, redundant
  node removal, Conv+BN/Add/Mul fusions, standard ONNX ops only; or ``extended``: also onnxruntime
  contrib fusions such as FusedConv). Layout (NCHWc) transforms are left to the device's runtime, so
  the file stays portable across CPUs and loads in stock onnxruntime. The IOSpec is stamped again;
- ``<stage>.int8.onnx`` for the heavy stages (default: ``frame``): static INT8 quantization in QDQ
  form (per-channel int8 weights, uint8 activations), calibrated on real frames: synthetic clips
  through the model's own letterbox pre-processing, and for later stages the FP32 outputs of the
  earlier ones;
- ``arm.json``: what was written, the session settings and the INT8-vs-FP32 mask agreement.

:func:`arm_session_options` / :func:`arm_providers` give the settings for 1-4 core devices (intra-op
threads = cores, spinning off, sequential; XNNPACK with its own pool when the build has it, else the
CPU provider). This module imports only numpy/onnxruntime at the top so the ARM-side tools can load
it without torch (``tools/arm/run_arm.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = ("basic", "extended")
INT8_STAGES = ("frame",)  # the backbone + mask decoder hold ~95% of MobileInst's FLOPs


def arm_providers(threads: int = 1, available: Sequence[str] | None = None) -> list[Any]:
    """XNNPACK (with ``threads`` in its own pool) then CPU when the build has XNNPACK, else CPU only."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if "XnnpackExecutionProvider" in available:
        return [("XnnpackExecutionProvider", {"intra_op_num_threads": str(int(threads))}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def arm_session_options(threads: int = 1, *, xnnpack: bool = False, level: str = "all") -> Any:
    """SessionOptions for a phone-class CPU with ``threads`` cores (1-4) to use.

    Spinning is off (idle threads would burn the cores the camera and UI need); execution is sequential
    with one inter-op thread. With XNNPACK the session's own pool is 1 thread and XNNPACK gets
    ``threads`` (its recommended setting, see :func:`arm_providers`).
    """
    import onnxruntime as ort

    if not 1 <= int(threads) <= 64:
        raise ValueError(f"threads must be in 1..64, received {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1 if xnnpack else int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return so


def arm_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime session with the ARM settings (XNNPACK when present, CPU fallback)."""
    import onnxruntime as ort

    providers = arm_providers(threads)
    so = arm_session_options(threads, xnnpack=providers[0] != "CPUExecutionProvider")
    return ort.InferenceSession(str(path), so, providers=providers)


def optimize_offline(src: str | Path, dst: str | Path, level: str = "basic") -> Path:
    """Save onnxruntime's optimised graph at a hardware-independent level; keep the metadata (IOSpec)."""
    import onnx
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"offline level {level!r}: expected one of {LEVELS} (higher levels are hardware-specific)")
    so = arm_session_options(1, level=level)
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    out = onnx.load(str(dst))
    _set_metadata(out, {**meta, "edgevis.target": f"arm (onnxruntime offline level {level})"})
    onnx.save(out, str(dst))
    return Path(dst)


def _set_metadata(proto: Any, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # older onnxruntime versions do not call it
        pass


def quantize_int8(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Static INT8 QDQ quantization (per-channel int8 weights, uint8 activations, MinMax calibration).

    ``reduce_range`` (7-bit weights) avoids the u8s8 overflow of x86 AVX2/AVX-512 kernels without VNNI and
    keeps x86 and ARM integer results close; on these graphs it also agreed best with FP32.
    """
    import onnxruntime.quantization as q

    q.quantize_static(
        str(src), str(dst), _Reader(feeds), quant_format=q.QuantFormat.QDQ, per_channel=True,
        activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"], reduce_range=True,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    import onnx

    proto = onnx.load(str(dst))
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    _set_metadata(proto, {**meta, "edgevis.precision": "int8-qdq"})
    onnx.save(proto, str(dst))
    return Path(dst)


def calibration_feeds(model: Any, stage_paths: dict[str, Path], frames: int = 24, seed: int = 101,
                      ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Feeds per stage from real frames: synthetic clips through the model's letterbox, then FP32 stages."""
    import onnxruntime as ort

    from edgevis.data.synthetic import make_dataset
    from edgevis.runtime.preprocess import prepare

    pol = model.policy()
    hw, pre = pol.hw, pol.pre
    # other sizes than the model's, so the letterbox (resize + padding) is part of the calibration
    clips = make_dataset(3, seed, num_frames=frames // 3, height=hw[0] + 40, width=hw[1] + 24, num_objects=(1, 4),
                         num_classes=min(4, 5), noise_std=3.0)
    images = [prepare(f, hw, pre)[0].numpy() for c in clips for f in c.frames]
    sessions = {s: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for s, p in stage_paths.items()}
    out: dict[str, list[dict[str, np.ndarray]]] = {"frame": [{"image": x} for x in images], "key": [], "mask": []}
    for x in images:
        x_mask, x6 = sessions["frame"].run(["x_mask", "x6"], {"image": x})
        out["key"].append({"x_mask": x_mask, "x6": x6})
        kernels = sessions["key"].run(["kernels"], {"x_mask": x_mask, "x6": x6})[0]
        out["mask"].append({"kernels": kernels, "x_mask": x_mask})
    return out


def matched_instance_iou(ref: Any, got: Any) -> tuple[list[float], int, int]:
    """Instances of two FrameResults matched by Hungarian on mask IoU: (IoUs of matched pairs, n_ref, n_got)."""
    from scipy.optimize import linear_sum_assignment

    from edgevis.data.metrics import mask_iou_matrix

    if ref.num_instances == 0 or got.num_instances == 0:
        return [], ref.num_instances, got.num_instances
    iou = mask_iou_matrix(ref.masks, got.masks)  # (N_ref, N_got)
    rows, cols = linear_sum_assignment(-iou)
    return [float(iou[r, c]) for r, c in zip(rows, cols)], ref.num_instances, got.num_instances


def int8_agreement(model: Any, fp32: dict[str, Path], int8: dict[str, Path], frames: int = 30, seed: int = 7,
                   ) -> dict[str, float]:
    """INT8 set vs FP32 set through the runner on a clip: mean mask IoU of instances matched per frame
    (Hungarian on IoU, independent of track numbering), and the share of FP32 instances matched at IoU >= 0.5."""
    from edgevis.data.synthetic import make_clip
    from edgevis.runtime.backends import OrtBackend
    from edgevis.runtime.runner import StreamRunner

    pol = model.policy()
    clip = make_clip(seed, num_frames=frames, height=pol.hw[0], width=pol.hw[1], num_objects=3)
    ref = StreamRunner(model.policy(), {s: OrtBackend(p, threads=1, spinning=False) for s, p in fp32.items()})
    got = StreamRunner(model.policy(), {s: OrtBackend(p, threads=1, spinning=False) for s, p in int8.items()})
    ious, n_ref, n_got = [], 0, 0
    for f in clip.frames:
        pairs, a, b = matched_instance_iou(ref.step([f])[0], got.step([f])[0])
        ious += pairs
        n_ref, n_got = n_ref + a, n_got + b
    return {"mean_matched_iou": float(np.mean(ious)) if ious else 1.0,
            "fp32_instances_matched": sum(i >= 0.5 for i in ious) / max(1, n_ref), "fp32_instances": n_ref,
            "int8_instances": n_got}


def export_for_arm(model: Any, out_dir: str | Path, *, stages: Sequence[str] | None = None, int8: bool = True,
                   level: str = "basic", int8_stages: Sequence[str] = INT8_STAGES) -> list[str]:
    """Write the ARM set for ``model`` under ``out_dir/<model>/``; returns one summary line per file."""
    from edgevis.export.onnx_export import export_stage

    stages = list(stages or model.stages)
    root = Path(out_dir) / model.name
    root.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    fp32: dict[str, Path] = {}
    for s in stages:
        portable = root / f"{s}.portable.onnx"
        report = export_stage(model, s, portable, "portable")
        fp32[s] = optimize_offline(portable, root / f"{s}.arm.onnx", level)
        err = max(report.max_abs_error.values(), default=0.0)
        lines.append(f"{model.name}/{s} [arm fp32, offline level {level}] -> {fp32[s]} (parity max abs err {err:.2e})")
    info: dict[str, Any] = {"model": model.name, "fp32": {s: p.name for s, p in fp32.items()}, "offline_level": level,
                            "session": {"intra_op_threads": "1-4 (cores)", "spinning": False,
                                        "providers": "XNNPACK if present, then CPU"}}
    quant = [s for s in int8_stages if s in fp32]
    if int8 and quant:
        if set(model.stages) - set(fp32):
            lines.append("int8: skipped (needs every stage exported for calibration; drop --stage)")
        else:
            feeds = calibration_feeds(model, fp32)
            q8 = {s: quantize_int8(root / f"{s}.portable.onnx", root / f"{s}.int8.onnx", feeds[s]) for s in quant}
            mixed = {s: q8.get(s, fp32[s]) for s in model.stages}
            agree = int8_agreement(model, fp32, mixed)
            iou = agree["mean_matched_iou"]
            info.update({"int8": {s: p.name for s, p in q8.items()}, "int8_mask_agreement_iou": iou,
                         "int8_agreement": agree})
            for s, p in q8.items():
                lines.append(f"{model.name}/{s} [arm int8 qdq, {len(feeds[s])} calibration frames] -> {p}")
            lines.append(f"int8 vs fp32 mask agreement: mean IoU of matched instances {iou:.3f} over 30 frames "
                         f"({agree['fp32_instances_matched']:.0%} of {agree['fp32_instances']} fp32 instances matched "
                         f"at IoU >= 0.5; int8 found {agree['int8_instances']})")
    (root / "arm.json").write_text(json.dumps(info, indent=1))
    lines.append(f"session settings for 1-4 cores: edgevis.export.arm.arm_session(path, threads); summary {root / 'arm.json'}")
    return lines
