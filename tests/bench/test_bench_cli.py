from __future__ import annotations

import pytest
import torch

from edgevis.cli import build_parser, main


def test_bench_precision_is_parsed_with_fp32_default():
    p = build_parser()
    assert p.parse_args(["bench", "--model", "toy_convgru"]).precision == "fp32"
    args = p.parse_args(["bench", "--model", "toy_convgru", "--precision", "int8", "--backends", "trt", "--gpu"])
    assert args.precision == "int8" and args.gpu and args.frames is None  # per-model default frames


def test_bench_unknown_precision_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", "toy_convgru", "--precision", "fp8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "'fp8'" in err and "fp16" in err


def test_bench_ort_fp16_is_refused_with_the_fix(tmp_path, capsys):
    rc = main(["bench", "--model", "toy_convgru", "--backends", "ort", "--precision", "fp16", "--quick",
               "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "edgevis bench: error: --precision fp16 --backends ort" in err and "--precision fp32" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip path of a machine without CUDA")
def test_bench_gpu_mode_skips_cleanly_without_cuda(tmp_path, capsys):
    assert main(["bench", "--model", "toy_convgru", "--gpu", "--quick", "--out", str(tmp_path)]) == 0
    assert "no CUDA device: GPU mode skipped" in capsys.readouterr().out
