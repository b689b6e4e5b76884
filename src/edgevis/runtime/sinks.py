"""Result sinks: annotated video, on-screen window, JSON Lines per frame, YouTube-VIS results at the end.

Every sink has ``write(image, result, fps=None)`` and ``close()``; ``open_sinks`` builds the usual set
behind one :class:`MultiSink`. Durability: ``JsonlSink`` flushes and fsyncs every line, so a crash
loses at most the line being written; ``YtvisResultsSink`` writes its JSON atomically (temporary file,
then ``os.replace``) at close. If a run dies before that, rebuild the YouTube-VIS file from the JSON
Lines with ``ytvis_from_jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edgevis.errors import EdgevisError, MissingDependencyError
from edgevis.runtime.results import FrameResult

log = logging.getLogger(__name__)

# 20 distinct BGR colours; a track's colour is PALETTE[track_id % 20].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (75, 25, 230),
    (75, 180, 60),
    (25, 225, 255),
    (200, 130, 0),
    (48, 130, 245),
    (180, 30, 145),
    (240, 240, 70),
    (230, 50, 240),
    (60, 245, 210),
    (212, 190, 250),
    (128, 128, 0),
    (255, 190, 220),
    (40, 110, 170),
    (200, 250, 255),
    (0, 0, 128),
    (195, 255, 170),
    (0, 128, 128),
    (180, 215, 255),
    (128, 0, 0),
    (128, 128, 128),
)


def track_color(track_id: int) -> tuple[int, int, int]:
    return PALETTE[int(track_id) % len(PALETTE)]


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int], scale: float = 0.45) -> None:
    """Text on a filled dark box so it reads on any background; ``org`` is the box's top-left corner."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = max(0, min(org[0], img.shape[1] - tw - 2))
    y = max(0, min(org[1], img.shape[0] - th - base - 2))
    cv2.rectangle(img, (x, y), (x + tw + 2, y + th + base + 2), (0, 0, 0), thickness=-1)
    cv2.putText(img, text, (x + 1, y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def annotate(
    image: np.ndarray,
    result: FrameResult,
    fps: float | None = None,
    *,
    alpha: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 BGR with masks blended and outlined in their track colour,
    a label "id:3 cls:2 0.87" per instance and an FPS overlay (when ``fps`` is given)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EdgevisError(f"annotate expects an (H, W, 3) uint8 BGR image, received {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if result.num_instances and tuple(result.masks.shape[1:]) != (h, w):
        raise EdgevisError(
            f"annotate: masks are {result.masks.shape[1]}x{result.masks.shape[2]} but the image is {h}x{w}; "
            "expected masks at the source resolution (FrameResult.source_hw); pass the frame the result came from"
        )
    out = image.copy()
    labels = []
    for i in range(result.num_instances):
        mask = result.masks[i]  # (H, W) bool
        if not mask.any():
            continue
        color = np.asarray(track_color(result.track_ids[i]), np.float32)
        out[mask] = (out[mask].astype(np.float32) * (1.0 - alpha) + color * alpha + 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, track_color(result.track_ids[i]), 1, cv2.LINE_AA)
        ys, xs = np.nonzero(mask)
        cls = int(result.class_ids[i])
        cls_txt = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else f"cls:{cls}"
        labels.append(
            (
                f"id:{int(result.track_ids[i])} {cls_txt} {float(result.scores[i]):.2f}",
                (int(xs.min()), int(ys.min())),
                track_color(result.track_ids[i]),
            )
        )
    for text, org, color in labels:  # after all blending so labels stay on top
        _text(out, text, org, color)
    if fps is not None:
        _text(out, f"FPS {fps:.1f}" + ("  reset" if result.reset else ""), (w, 0), (255, 255, 255), scale=0.5)
    return out


class Sink(Protocol):
    def write(self, image: np.ndarray, result: FrameResult, fps: float | None = None) -> None: ...

    def close(self) -> None: ...


class VideoSink:
    """Annotated frames to a video file (mp4v). Stream k > 0 goes to ``<stem>_stream<k><suffix>``.

    The writer's size is fixed by a stream's first frame; frames of another resolution later in the
    stream are resized to it (logged once).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = 30.0,
        *,
        fourcc: str = "mp4v",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise EdgevisError(
                f"cannot save video to {self.path}: folder {self.path.parent} does not exist; create it or pick another --save path"
            )
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.fourcc = fourcc
        self.class_names = class_names
        self._writers: dict[int, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self._resize_logged: set[int] = set()
        self.frames_written = 0

    def path_for(self, stream: int) -> Path:
        return self.path if stream == 0 else self.path.with_name(f"{self.path.stem}_stream{stream}{self.path.suffix}")

    def write(self, image: np.ndarray, result: FrameResult, fps: float | None = None) -> None:
        frame = annotate(image, result, fps, class_names=self.class_names)  # (H, W, 3) uint8
        s = result.stream
        if s not in self._writers:
            h, w = frame.shape[:2]
            p = self.path_for(s)
            wr = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not wr.isOpened():
                raise EdgevisError(
                    f"cannot open a {self.fourcc} video writer for {p} ({w}x{h}); use a .mp4 or .avi path"
                )
            self._writers[s] = (wr, (h, w))
        wr, (h, w) = self._writers[s]
        if frame.shape[:2] != (h, w):
            if s not in self._resize_logged:
                log.warning(
                    "%s: frame size %s differs from the video's %s; resizing", self.path_for(s), frame.shape[:2], (h, w)
                )
                self._resize_logged.add(s)
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        wr.write(frame)
        self.frames_written += 1

    def close(self) -> None:
        for wr, _ in self._writers.values():
            wr.release()
        self._writers.clear()


class WindowSink:
    """Shows annotated frames in one window per stream; ``quit_requested`` turns True on 'q' or Esc."""

    def __init__(self, title: str = "edgevis", class_names: Sequence[str] | None = None) -> None:
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EdgevisError(
                "--show needs a display but DISPLAY is not set (headless machine or ssh without -X); use --save out.mp4 instead"
            )
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
            cv2.destroyWindow(title)
        except cv2.error as e:
            raise MissingDependencyError(
                f"--show needs OpenCV with GUI support, but this OpenCV has none ({str(e).strip().splitlines()[-1]}); "
                "pip install opencv-python instead of opencv-python-headless, or use --save out.mp4"
            ) from None
        self.title = title
        self.class_names = class_names
        self.quit_requested = False

    def write(self, image: np.ndarray, result: FrameResult, fps: float | None = None) -> None:
        cv2.imshow(f"{self.title} stream {result.stream}", annotate(image, result, fps, class_names=self.class_names))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit_requested = True

    def close(self) -> None:
        cv2.destroyAllWindows()


class JsonlSink:
    """One JSON line per FrameResult (``FrameResult.to_json_dict``), flushed and fsync'd per frame."""

    def __init__(self, path: str | os.PathLike[str], *, rle: bool = True, fsync: bool = True) -> None:
        self.path = Path(path)
        try:
            self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        except OSError as e:
            raise EdgevisError(f"cannot write results to {self.path}: {e.strerror}; pick another --json path") from None
        self.rle = rle
        self.fsync = fsync
        self.lines = 0

    def write(self, image: np.ndarray | None, result: FrameResult, fps: float | None = None) -> None:
        line = json.dumps(result.to_json_dict(rle=self.rle), separators=(",", ":")) + "\n"
        self._f.write(line)  # one write per line: a crash leaves at most a partial last line
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self.lines += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


@dataclass
class _Track:
    video_id: int
    segmentations: dict[int, dict[str, Any]] = field(default_factory=dict)  # frame index -> RLE
    scores: list[float] = field(default_factory=list)
    classes: Counter = field(default_factory=Counter)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class YtvisResultsSink:
    """YouTube-VIS results JSON written atomically at ``close``.

    One entry per track: ``{"video_id", "category_id", "score", "segmentations"}`` where
    ``segmentations[f]`` is the COCO RLE of frame ``f`` or ``None`` where the track is absent. Stream k
    is video ``video_ids[k]`` (default k + 1). ``category_id`` is the track's most frequent class id
    plus ``category_offset`` (1 for models that predict 0-based ids of the 1-based YTVIS categories);
    ``score`` is the mean score. A stream reset starts new tracks, since track ids may restart.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, video_ids: Sequence[int] | None = None, category_offset: int = 0
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise EdgevisError(
                f"cannot write YouTube-VIS results to {self.path}: folder {self.path.parent} does not exist"
            )
        self.video_ids = list(video_ids) if video_ids is not None else None
        self.category_offset = category_offset
        self._tracks: dict[tuple[int, int, int], _Track] = {}  # (stream, epoch, track id) -> track
        self._epoch: dict[int, int] = {}
        self._length: dict[int, int] = {}  # stream -> frames seen (max index + 1)
        self._closed = False

    def _video_id(self, stream: int) -> int:
        if self.video_ids is None:
            return stream + 1
        if stream >= len(self.video_ids):
            raise EdgevisError(
                f"YtvisResultsSink got stream {stream} but only {len(self.video_ids)} video_ids; pass one id per stream"
            )
        return int(self.video_ids[stream])

    def write(self, image: np.ndarray | None, result: FrameResult, fps: float | None = None) -> None:
        self.add_json(result.to_json_dict(rle=True))

    def add_json(self, d: dict[str, Any]) -> None:
        """Add one frame in ``FrameResult.to_json_dict`` form (what JsonlSink writes)."""
        s, idx = int(d["stream"]), int(d["index"])
        if d.get("reset") and s in self._epoch:
            self._epoch[s] += 1
        epoch = self._epoch.setdefault(s, 0)
        self._length[s] = max(self._length.get(s, 0), idx + 1)
        for inst in d["instances"]:
            key = (s, epoch, int(inst["track_id"]))
            tr = self._tracks.get(key)
            if tr is None:
                tr = self._tracks[key] = _Track(self._video_id(s))
            tr.segmentations[idx] = inst["segmentation"]
            tr.scores.append(float(inst["score"]))
            tr.classes[int(inst["class_id"])] += 1

    def results(self) -> list[dict[str, Any]]:
        out = []
        for (s, _, _), tr in self._tracks.items():
            n = self._length[s]
            out.append(
                {
                    "video_id": tr.video_id,
                    "category_id": tr.classes.most_common(1)[0][0] + self.category_offset,
                    "score": round(float(np.mean(tr.scores)), 6),
                    "segmentations": [tr.segmentations.get(f) for f in range(n)],
                }
            )
        return out

    def close(self) -> None:
        if not self._closed:
            _write_json_atomic(self.path, self.results())
            self._closed = True


def ytvis_from_jsonl(jsonl_path: str | os.PathLike[str], out_path: str | os.PathLike[str], **kwargs: Any) -> int:
    """Rebuild YouTube-VIS results from a JSON Lines file (e.g. after a crash); returns frames read.

    A partial last line (the process died while writing it) is skipped with a warning."""
    sink = YtvisResultsSink(out_path, **kwargs)
    n = 0
    with open(jsonl_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an unreadable (partial) line", jsonl_path, lineno)
                continue
            sink.add_json(d)
            n += 1
    sink.close()
    return n


class MultiSink:
    """Fans each result out to several sinks; ``close`` closes all of them, even if one fails."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    @property
    def quit_requested(self) -> bool:
        return any(getattr(s, "quit_requested", False) for s in self.sinks)

    def write(self, image: np.ndarray, result: FrameResult, fps: float | None = None) -> None:
        for s in self.sinks:
            s.write(image, result, fps)

    def close(self) -> None:
        errors = []
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # close the rest, then report the first failure
                log.error("closing %s failed: %s", type(s).__name__, e)
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> MultiSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sinks(
    save: str | os.PathLike[str] | None = None,
    json: str | os.PathLike[str] | None = None,
    show: bool = False,
    *,
    fps: float = 30.0,
    ytvis: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> MultiSink:
    """The usual sinks: ``save`` -> VideoSink, ``json`` -> JsonlSink plus YouTube-VIS results at
    ``ytvis`` (default: ``<json stem>.ytvis.json`` beside it), ``show`` -> WindowSink."""
    sinks: list[Sink] = []
    try:
        if save is not None:
            sinks.append(VideoSink(save, fps, class_names=class_names))
        if json is not None:
            jp = Path(json)
            sinks.append(JsonlSink(jp))
            sinks.append(YtvisResultsSink(ytvis if ytvis is not None else jp.with_name(f"{jp.stem}.ytvis.json")))
        elif ytvis is not None:
            sinks.append(YtvisResultsSink(ytvis))
        if show:
            sinks.append(WindowSink(class_names=class_names))
    except Exception:
        MultiSink(sinks).close()
        raise
    return MultiSink(sinks)
