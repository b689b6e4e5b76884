"""`make demo`: the main job on an embedded default, from a fresh clone.

Best backend available (TensorRT if installed, else onnxruntime CPU); the camera if one opens,
else a generated sample clip; writes an annotated video and prints an FPS line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

from edgevis.models.zoo import MODELS, build_model
from edgevis.runtime.pipeline import best_backend, open_backends, run_streams
from edgevis.runtime.runner import StreamRunner
from edgevis.runtime.sinks import open_sinks
from edgevis.runtime.sources import open_source

log = logging.getLogger(__name__)
DEMO_PREFERENCE = ("mobileinst_tiny", "toy_convgru")  # first one that ships trained weights wins


def default_demo_model() -> str:
    for name in DEMO_PREFERENCE:
        if name in MODELS and MODELS[name].trained:
            return name
    return "toy_convgru"


def camera_available(index: int = 0) -> bool:
    if not Path(f"/dev/video{index}").exists():
        return False
    cap = cv2.VideoCapture(index)
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    return bool(ok)


def write_sample_clip(path: Path, frames: int = 60, seed: int = 7, hw: tuple[int, int] = (256, 448)) -> Path:
    """A synthetic clip of moving textured shapes (the demo's input when there is no camera)."""
    from edgevis.data.synthetic import make_clip

    clip = make_clip(seed, num_frames=frames, height=hw[0], width=hw[1], num_objects=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (hw[1], hw[0]))
    for f in clip.frames:
        writer.write(f)
    writer.release()
    return path


def run_demo(out_dir: Path, model_name: str | None = None, backend: str | None = None, frames: int = 60) -> str:
    out_dir = Path(out_dir)
    name = model_name or default_demo_model()
    entry = MODELS[name]
    if not entry.trained:
        print(f"note: the demo runs '{name}', which has no trained weights yet: its masks show the pipeline "
              "(state, letterboxing, tracking ids, sinks), not segmentation quality.")
    if camera_available():
        source_spec: str | int = 0
        print("demo source: camera 0")
    else:
        source_spec = str(write_sample_clip(out_dir / "sample_input.mp4", frames))
        print(f"demo source: no camera found; generated sample clip {source_spec}")
    kind = backend or best_backend()
    model = build_model(name)
    runner = StreamRunner(model.policy(), open_backends(model, kind, onnx_dir=out_dir / "onnx", threads=2))
    source = open_source(source_spec)
    video = out_dir / "demo.mp4"
    sinks = open_sinks(save=video, json=out_dir / "demo.jsonl", fps=source.fps or 15.0)
    try:
        summary = run_streams(runner, [source], [sinks], max_frames=frames if source.is_live else None)
    finally:
        source.close()
        sinks.close()
        runner.close()
    line = summary.line(kind)
    print(f"annotated video: {video}")
    print(f"FPS: {line}")
    return line
