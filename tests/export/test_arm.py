"""ARM export: session settings, offline-optimised portable graphs, INT8 QDQ, and the qemu check (slow)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgevis.export.arm import arm_providers, arm_session_options, optimize_offline, quantize_int8
from edgevis.export.onnx_export import export_stage
from edgevis.models.mobileinst import MobileInst
from edgevis.spec import IOSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key_onnx(tmp_path_factory) -> tuple[MobileInst, Path]:
    torch.manual_seed(0)
    model = MobileInst("mobileinst_tiny")
    path = tmp_path_factory.mktemp("arm") / "key.portable.onnx"
    export_stage(model, "key", path, "portable")
    return model, path


def test_providers_prefer_xnnpack_with_its_own_threads() -> None:
    got = arm_providers(3, available=["XnnpackExecutionProvider", "CPUExecutionProvider"])
    assert got == [("XnnpackExecutionProvider", {"intra_op_num_threads": "3"}), "CPUExecutionProvider"]
    assert arm_providers(2, available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_session_options_for_few_cores(threads: int) -> None:
    so = arm_session_options(threads)
    assert so.intra_op_num_threads == threads and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert arm_session_options(threads, xnnpack=True).intra_op_num_threads == 1  # XNNPACK has its own pool


def test_offline_optimised_graph_is_portable_and_keeps_its_iospec(tmp_path, key_onnx) -> None:
    model, src = key_onnx
    dst = optimize_offline(src, tmp_path / "key.arm.onnx", "basic")
    proto = onnx.load(str(dst))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}  # standard ops only at the basic level
    spec = IOSpec.from_onnx(dst, expect_model="mobileinst_tiny", expect_stage="key")
    feeds = {k: v.numpy() for k, v in spec.example_inputs(seed=2).items()}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_offline_level_must_be_hardware_independent(tmp_path, key_onnx) -> None:
    with pytest.raises(ValueError, match="hardware-specific"):
        optimize_offline(key_onnx[1], tmp_path / "x.onnx", "all")


def test_int8_qdq_quantization(tmp_path, key_onnx) -> None:
    model, src = key_onnx
    spec = model.iospec("key")
    feeds = [{k: v.numpy() for k, v in spec.example_inputs(seed=s).items()} for s in range(4)]
    dst = quantize_int8(src, tmp_path / "key.int8.onnx", feeds)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert IOSpec.from_onnx(dst).stage == "key"
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["kernels"], feeds[0])[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(["kernels"], feeds[0])[0]
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cos.mean() > 0.95  # close to FP32 on calibration-like data


@pytest.mark.slow
def test_export_for_arm_writes_fp32_and_int8_sets(tmp_path) -> None:
    import json

    from edgevis.export.arm import export_for_arm
    from edgevis.models.zoo import build_model

    model = build_model("mobileinst_tiny")
    lines = export_for_arm(model, tmp_path)
    root = tmp_path / "mobileinst_tiny"
    info = json.loads((root / "arm.json").read_text())
    assert sorted(info["fp32"]) == ["frame", "key", "mask"] and list(info["int8"]) == ["frame"]
    assert all((root / n).is_file() for n in [*info["fp32"].values(), *info["int8"].values()])
    assert info["int8_mask_agreement_iou"] >= 0.9
    assert any("agreement" in line for line in lines)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="qemu-user-static is not installed")
def test_aarch64_onnxruntime_matches_x86_under_qemu() -> None:
    root = REPO / ".cache" / "arm-root"
    if not (root / ".complete").is_file():
        pytest.skip(f"arm64 root {root} not built (run tools/arm/build_root.sh or make arm-check)")
    sys.path.insert(0, str(REPO / "tools" / "arm"))
    import arm_check

    assert arm_check.main(["--model", "mobileinst_tiny", "--root", str(root)]) == 0
