"""Capture machinery shared by every source: frames, the reader, the drop-oldest queue, Source.

A :class:`Source` wraps a :class:`_Reader` (a capture plus reconnect policy). Live sources run the
reader in a capture thread that feeds a :class:`DropOldestQueue`; files are read in the caller's
thread. See :mod:`edgevis.runtime.sources` for how each kind of source is opened.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from edgevis.errors import SourceError

log = logging.getLogger("edgevis.runtime.sources")


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``index`` counts captured frames (dropped ones included, so gaps show drops)."""

    index: int
    image: np.ndarray  # (H, W, 3) uint8 BGR
    t: float  # media time in seconds for files/folders; time.monotonic() at capture for live sources
    source_hw: tuple[int, int]
    resolution_changed: bool = False  # True when (H, W) differs from the previous frame's


@dataclass(frozen=True)
class ReconnectPolicy:
    """How network sources retry. Delay before attempt k (1-based) is ``min(max_delay_s, base_delay_s * 2**(k-1))``."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    stall_timeout_s: float = 20.0  # no progress at all from the capture thread for this long -> SourceError

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))


class Capture(Protocol):
    """What a source reads from: ``cv2.VideoCapture`` or anything with the same two methods."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def to_bgr_u8(image: np.ndarray, where: str = "frame") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) frame of uint8/uint16/float -> (H, W, 3) uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise SourceError(
            f"{where}: pixel type {image.dtype} is not supported; expected uint8, uint16 or float in [0, 1]"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise SourceError(
        f"{where}: frame of shape {tuple(image.shape)} is not an image; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
    )


class _Reader:
    """Raw frames from a Capture, reopening network streams on failure. ``read()`` -> (image, t) or None at the end."""

    def __init__(
        self,
        name: str,
        cap: Capture,
        *,
        opener: Callable[[], Capture | None] | None = None,
        policy: ReconnectPolicy | None = None,
        fps: float | None = None,
        live: bool = False,
    ) -> None:
        self.name = name
        self.cap: Capture | None = cap
        self.opener = opener
        self.policy = policy or ReconnectPolicy()
        self.fps = fps
        self.live = live
        self.count = 0
        self.heartbeat = time.monotonic()
        self.stop = threading.Event()
        self.pending: np.ndarray | None = None  # a frame read during validation, delivered first
        self.failure_message: str | None = None  # set for sources that never end normally (cameras)

    def _t(self) -> float:
        if self.live:
            return time.monotonic()
        if self.fps:
            return self.count / self.fps
        pos = self.cap.get(cv2.CAP_PROP_POS_MSEC) if hasattr(self.cap, "get") else 0.0
        return float(pos) / 1e3

    def read(self) -> tuple[np.ndarray, float] | None:
        self.heartbeat = time.monotonic()
        if self.pending is not None:
            img, self.pending = self.pending, None
            return img, self._t()
        if self.cap is not None:
            ok, img = self.cap.read()
            self.heartbeat = time.monotonic()
            if ok and img is not None:
                return img, self._t()
        if self.stop.is_set():
            return None
        if self.opener is None:
            if self.failure_message is not None:
                log.error(self.failure_message)
                raise SourceError(self.failure_message)
            return None  # files and folders: a failed read is the end of the stream
        return self._reconnect()

    def _reconnect(self) -> tuple[np.ndarray, float] | None:
        self._release()
        p = self.policy
        for attempt in range(1, p.attempts + 1):
            delay = p.delay(attempt)
            log.warning("%s: read failed; reconnect attempt %d/%d in %.2f s", self.name, attempt, p.attempts, delay)
            self.heartbeat = time.monotonic()
            if self.stop.wait(delay):
                return None
            self.heartbeat = time.monotonic()
            cap = self.opener()
            self.heartbeat = time.monotonic()
            if cap is None:
                continue
            ok, img = cap.read()
            if ok and img is not None:
                log.info("%s: reconnected on attempt %d", self.name, attempt)
                self.cap = cap
                return img, self._t()
            cap.release()
        msg = (
            f"stream {self.name} lost after {p.attempts} reconnect attempts; "
            "check that the server is running and reachable, or raise ReconnectPolicy.attempts"
        )
        log.error(msg)
        raise SourceError(msg)

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def close(self) -> None:
        self.stop.set()
        self._release()


_END = object()


class DropOldestQueue:
    """Bounded FIFO between a capture thread and the consumer: ``put`` on a full queue drops the oldest item."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise SourceError(f"queue_size must be >= 1, received {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def close(self) -> None:
        """No more items; ``get`` returns the sentinel ``_END`` once the queue is drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout: float) -> Any:
        """Next item, ``_END`` after ``close`` and drained, or ``None`` when ``timeout`` s pass with nothing."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return _END if self._closed else None


class Source:
    """Iterator of :class:`Frame`; a context manager; ``close()`` stops capture and releases the device."""

    def __init__(self, name: str, reader: _Reader, *, is_live: bool, fps: float | None, queue_size: int = 4) -> None:
        self.name = name
        self.is_live = is_live
        self.fps = fps
        self._reader = reader
        self._last_hw: tuple[int, int] | None = None
        self._done = False
        self._error: SourceError | None = None
        self._queue: DropOldestQueue | None = None
        self._thread: threading.Thread | None = None
        if is_live:
            self._queue = DropOldestQueue(queue_size)
            self._thread = threading.Thread(target=self._capture_loop, name=f"edgevis-capture:{name}", daemon=True)
            self._thread.start()

    @classmethod
    def from_capture(
        cls, cap: Capture, *, name: str = "capture", live: bool = True, queue_size: int = 4, fps: float | None = None
    ) -> Source:
        """Wrap any object with ``read() -> (ok, image)`` and ``release()`` (a GStreamer pipeline, a test double)."""
        return cls(name, _Reader(name, cap, fps=fps, live=live), is_live=live, fps=fps, queue_size=queue_size)

    @property
    def dropped(self) -> int:
        """Frames the live queue dropped because the consumer was slower than the capture."""
        return self._queue.dropped if self._queue is not None else 0

    def _capture_loop(self) -> None:
        assert self._queue is not None
        index = 0
        try:
            while not self._reader.stop.is_set():
                item = self._reader.read()
                if item is None:
                    break
                self._queue.put((index, *item))
                index += 1
        except SourceError as e:
            self._error = e
        except Exception as e:  # a capture backend bug must end the stream, not kill it silently
            log.exception("%s: capture thread failed", self.name)
            self._error = SourceError(f"{self.name}: capture failed with {type(e).__name__}: {e}")
        finally:
            self._queue.close()
            self._reader.close()  # the capture thread owns the device: release it here, never concurrently

    def _next_raw(self) -> tuple[int, np.ndarray, float] | None:
        if self._queue is None:
            item = self._reader.read()
            if item is None:
                return None
            self._reader.count += 1
            return (self._reader.count - 1, *item)
        stall = self._reader.policy.stall_timeout_s
        while True:
            got = self._queue.get(timeout=0.25)
            if got is _END:
                if self._error is not None:
                    raise self._error
                return None
            if got is not None:
                return got
            if time.monotonic() - self._reader.heartbeat > stall:
                raise SourceError(
                    f"{self.name}: no frame and no progress for {stall:.0f} s; the capture is stuck "
                    "(check the device/stream, or raise ReconnectPolicy.stall_timeout_s)"
                )

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._done:
            raise StopIteration
        try:
            raw = self._next_raw()
        except SourceError:
            self._done = True
            self.close()
            raise
        if raw is None:
            self._done = True
            raise StopIteration
        index, img, t = raw
        image = to_bgr_u8(img, where=f"{self.name} frame {index}")  # (H, W, 3) uint8
        hw = (int(image.shape[0]), int(image.shape[1]))
        changed = self._last_hw is not None and hw != self._last_hw
        if changed:
            log.info("%s: resolution changed %s -> %s at frame %d", self.name, self._last_hw, hw, index)
        self._last_hw = hw
        return Frame(index=index, image=image, t=t, source_hw=hw, resolution_changed=changed)

    def close(self) -> None:
        self._reader.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # if it is stuck in a C read it releases the device itself on return
        else:
            self._reader.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Source({self.name!r}, live={self.is_live}, fps={self.fps}, dropped={self.dropped})"
