"""Frame sources: camera, video file, image folder or glob, network stream (RTSP/HTTP).

``open_source(spec)`` validates the source up front and returns a :class:`Source`, an iterator of
:class:`Frame` whose images are always (H, W, 3) uint8 BGR (grayscale, BGRA and 16-bit frames are
converted). Behaviour per kind:

- files and folders are read in the calling thread, every frame in order, never dropped;
- live sources (camera, network) are read by a capture thread into a bounded queue that drops the
  OLDEST frame when full (``Source.dropped`` counts them), so the consumer always gets fresh frames;
- network streams reconnect with exponential back-off (:class:`ReconnectPolicy`); after the last
  attempt the iterator raises ``SourceError("stream ... lost after N reconnect attempts ...")``.
  Every wait has a timeout: a capture that stops producing without failing raises after
  ``ReconnectPolicy.stall_timeout_s``.

A resolution change mid-stream is passed through and flagged (``Frame.resolution_changed``); the
runner resets that stream.

Network streams go through OpenCV's FFmpeg backend; FFmpeg options such as RTSP over TCP are set the
OpenCV way, in the environment: ``OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp"``.
"""

from __future__ import annotations

import glob as globlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgevis.errors import SourceError
from edgevis.runtime.capture import (  # noqa: F401 - re-exported: the public source API
    Capture,
    DropOldestQueue,
    Frame,
    ReconnectPolicy,
    Source,
    _Reader,
    to_bgr_u8,
)

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_GLOB_CHARS = re.compile(r"[*?\[]")


class _FolderCapture:
    """Images from a sorted list of files, behaving like a Capture."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.pos = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.pos >= len(self.files):
            return False, None
        path = self.files[self.pos]
        self.pos += 1
        return True, _imread(path)

    def release(self) -> None:
        self.pos = len(self.files)


def _imread(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SourceError(
            f"cannot decode image {path}; expected a readable {'/'.join(IMAGE_EXTS)} file; fix or remove it"
        )
    return img


def _natural_key(path: str) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path)]


def _list_images(spec: str) -> list[str]:
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        files = [str(p) for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        what = f"folder {spec}"
    else:
        files = [f for f in globlib.glob(spec) if os.path.isfile(f)]
        what = f"glob '{spec}'"
    if not files:
        raise SourceError(
            f"{what} has no image files; expected {'/'.join(IMAGE_EXTS)} files; check the path or pattern"
        )
    return sorted(files, key=_natural_key)  # natural order: frame2 before frame10


def _open_images(spec: str, fps: float | None, live: bool, queue_size: int) -> Source:
    files = _list_images(spec)
    cap = _FolderCapture(files)
    reader = _Reader(spec, cap, fps=fps or 30.0, live=live)
    reader.pending = _imread(files[0])  # validate up front
    cap.pos = 1
    return Source(spec, reader, is_live=live, fps=fps, queue_size=queue_size)


def _cv_open(target: str | int, api: int, policy: ReconnectPolicy | None = None) -> cv2.VideoCapture | None:
    params: list[int] = []
    if policy is not None:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(policy.open_timeout_s * 1e3),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(policy.read_timeout_s * 1e3),
        ]
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our SourceError says it better than its warnings
    try:
        cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if cap.isOpened():
        return cap
    cap.release()
    return None


def _fps_of(cap: Any) -> float | None:
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    return fps if 0.0 < fps < 1000.0 else None


def _open_video_file(path: str, live: bool, queue_size: int) -> Source:
    size = os.path.getsize(path)
    if size == 0:
        raise SourceError(
            f"video file {path} is empty (0 bytes); expected a video (.mp4, .avi, .mkv ...); re-export or re-download it"
        )
    cap = _cv_open(path, cv2.CAP_FFMPEG) or _cv_open(path, cv2.CAP_ANY)
    if cap is None:
        raise SourceError(
            f"video file {path} ({size} bytes) cannot be opened: not a container/codec OpenCV's FFmpeg can decode; "
            f"expected a video (.mp4, .avi, .mkv ...); check it with `ffprobe {path}` or re-encode it with `ffmpeg -i {path} out.mp4`"
        )
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise SourceError(
            f"video file {path} ({size} bytes) opens but has no decodable frames (truncated or corrupt); "
            f"expected at least one frame; check it with `ffprobe {path}` or re-encode it"
        )
    fps = _fps_of(cap)
    reader = _Reader(path, cap, fps=fps, live=live)
    reader.pending = first
    return Source(path, reader, is_live=live, fps=fps, queue_size=queue_size)


def _available_cameras() -> str:
    devs = sorted(globlib.glob("/dev/video*"), key=_natural_key)
    return ", ".join(devs) if devs else "none found (no /dev/video* devices)"


def _open_camera(index_or_path: int | str, live: bool, queue_size: int) -> Source:
    name = f"camera {index_or_path}"
    cap = _cv_open(index_or_path, cv2.CAP_ANY)
    hint = f"available: {_available_cameras()}; check permissions (user in the 'video' group) or pass another --source"
    if cap is None:
        raise SourceError(f"{name} cannot be opened; {hint}")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise SourceError(f"{name} opened but delivered no frame; is another program using it? {hint}")
    fps = _fps_of(cap)
    reader = _Reader(name, cap, fps=fps, live=live)
    reader.pending = first
    reader.failure_message = f"{name} stopped delivering frames after opening (unplugged or busy?); {hint}"
    return Source(name, reader, is_live=live, fps=fps, queue_size=queue_size)


def _open_network(url: str, live: bool, queue_size: int, policy: ReconnectPolicy) -> Source:
    def opener() -> Capture | None:
        return _cv_open(url, cv2.CAP_FFMPEG, policy)

    cap = opener()
    attempt = 0
    while cap is None and attempt < policy.attempts:
        attempt += 1
        delay = policy.delay(attempt)
        log.warning("%s: cannot open; retry %d/%d in %.2f s", url, attempt, policy.attempts, delay)
        time.sleep(delay)
        cap = opener()
    if cap is None:
        raise SourceError(
            f"stream {url} cannot be opened after {policy.attempts + 1} tries; "
            "check that the server is running, the URL and port, and that this build of OpenCV has FFmpeg"
        )
    fps = _fps_of(cap)
    reader = _Reader(url, cap, opener=opener, policy=policy, fps=fps, live=live)
    return Source(url, reader, is_live=live, fps=fps, queue_size=queue_size)


def open_source(
    spec: str | int | os.PathLike[str],
    *,
    live: bool | None = None,
    queue_size: int = 4,
    reconnect: ReconnectPolicy | None = None,
    fps: float | None = None,
) -> Source:
    """Open a camera (int, "0", "/dev/videoN"), video file, image folder or glob, or rtsp/http(s) URL.

    ``live`` overrides the default delivery (cameras and URLs: capture thread + drop-oldest queue of
    ``queue_size``; files and folders: every frame in order). ``reconnect`` tunes network retries.
    ``fps`` is the frame rate to assume for image folders (their ``Frame.t`` and ``Source.fps``).
    """
    policy = reconnect or ReconnectPolicy()
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdigit()):
        return _open_camera(int(spec), True if live is None else live, queue_size)
    spec = os.fspath(spec)
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme:
        if scheme not in NETWORK_SCHEMES:
            raise SourceError(
                f"source {spec}: scheme '{scheme}://' is not supported; expected one of {', '.join(s + '://' for s in NETWORK_SCHEMES)}"
            )
        return _open_network(spec, True if live is None else live, queue_size, policy)
    is_live = bool(live)
    if re.fullmatch(r"/dev/video\d+", spec):
        if not os.path.exists(spec):
            raise SourceError(
                f"camera {spec} cannot be opened: no such device; available: {_available_cameras()}; check the --source path"
            )
        return _open_camera(spec, True if live is None else live, queue_size)
    if _GLOB_CHARS.search(spec) and not os.path.exists(spec):
        return _open_images(spec, fps, is_live, queue_size)
    if not os.path.exists(spec):
        raise SourceError(
            f"source {spec} does not exist; expected a video file, image folder, glob, camera index or rtsp/http URL; check the path"
        )
    if os.path.isdir(spec) or Path(spec).suffix.lower() in IMAGE_EXTS:
        return _open_images(spec, fps, is_live, queue_size)  # a single image is a one-frame folder
    return _open_video_file(spec, is_live, queue_size)
