"""`edgevis check --model M`: PyTorch vs onnxruntime, both ONNX flavors, one step and many frames.

For each flavor: every stage is exported (export itself verifies single-step parity against the
IOSpec's per-output tolerances), then a synthetic clip runs through two StreamRunners, one on
PyTorch and one on onnxruntime, each carrying its own state (free-running), and their masks and
track ids are compared frame by frame. A JSON report per flavor goes to ``out_dir``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from edgevis.check.agreement import Agreement
from edgevis.models.zoo import build_model
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.runner import StreamRunner

MIN_MEAN_IOU = 0.99
MIN_ID_AGREEMENT = 0.99


def check_clip(model_name: str, frames: int, hw: tuple[int, int], seed: int = 3):
    from edgevis.data.synthetic import make_clip

    return make_clip(seed, num_frames=frames, height=hw[0], width=hw[1], num_objects=3)


def run_check(model_name: str, *, weights: str | None = None, frames: int = 30, out_dir: Path = Path("reports/check"),
              flavors: list[str] | tuple[str, ...] = ("portable", "trt"), onnx_dir: Path | None = None,
              verbose: bool = True) -> bool:
    model = build_model(model_name, weights)
    policy = model.policy()
    hw = policy.input_hw(model.stages[0])
    clip = check_clip(model_name, frames, hw)
    options = getattr(model, "check_policy_options", None)  # policies that need inputs (spvos: first masks)
    opts = options(clip) if options else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok_all = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(onnx_dir) if onnx_dir else Path(tmp)
        ref = StreamRunner(model.policy(**opts), open_backends(model, "torch"))
        reference = [ref.step([frame])[0] for frame in tqdm(clip.frames, desc=f"check {model_name} [torch]",
                                                              unit="frame", leave=False)]  # once for all flavors
        ref.close()
        for flavor in flavors:
            got_backends = open_backends(model, "ort", flavor=flavor, onnx_dir=root / flavor, threads=2)
            got = StreamRunner(model.policy(**opts), got_backends)
            agree = Agreement()
            for frame, want in zip(tqdm(clip.frames, desc=f"check {model_name} [{flavor}]", unit="frame", leave=False),
                                   reference):
                agree.add(want, got.step([frame])[0])
            ok = agree.mean_iou >= MIN_MEAN_IOU and agree.mean_id_agreement >= MIN_ID_AGREEMENT
            ok_all &= ok
            report = {
                "model": model_name, "flavor": flavor, "frames": frames, "backend": "onnxruntime-cpu",
                "mean_mask_iou": agree.mean_iou, "min_frame_iou": min(agree.frame_iou),
                "mean_track_id_agreement": agree.mean_id_agreement, "per_frame_iou": agree.frame_iou,
                "thresholds": {"mean_mask_iou": MIN_MEAN_IOU, "track_id_agreement": MIN_ID_AGREEMENT}, "pass": ok,
            }
            path = out_dir / f"{model_name}.{flavor}.json"
            path.write_text(json.dumps(report, indent=1))
            if verbose:
                print(f"{'PASS' if ok else 'FAIL'} {model_name} [{flavor}] {frames} frames: mean mask IoU "
                      f"{agree.mean_iou:.4f} (min {min(agree.frame_iou):.4f}), track-id agreement "
                      f"{agree.mean_id_agreement:.4f} -> {path}")
            got.close()
    return ok_all
