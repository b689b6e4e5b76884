"""Sources: every kind, frame normalisation, bad input, drop-oldest queue, network reconnect against a live server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevis.errors import SourceError
from edgevis.runtime.sources import DropOldestQueue, ReconnectPolicy, Source, open_source, to_bgr_u8


def _write_video(path: Path, n: int, hw: tuple[int, int] = (48, 64), fourcc: str = "mp4v") -> None:
    h, w = hw
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
    assert wr.isOpened()
    for i in range(n):
        wr.write(np.full((h, w, 3), 20 * i, np.uint8))
    wr.release()


def test_video_file_reads_every_frame_in_order(tmp_path: Path) -> None:
    p = tmp_path / "clip.mp4"
    _write_video(p, 9)
    with open_source(p) as src:
        assert not src.is_live and src.fps == pytest.approx(10.0)
        frames = list(src)
    assert [f.index for f in frames] == list(range(9))
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 and f.source_hw == (48, 64) for f in frames)
    means = [float(f.image.mean()) for f in frames]
    assert means == sorted(means) and means[-1] - means[0] > 100  # the frames' brightness ramp, in order
    assert [f.t for f in frames][:3] == pytest.approx([0.0, 0.1, 0.2])
    assert src.dropped == 0


def test_folder_sorted_naturally_and_glob(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 12, 3), i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    frames = list(open_source(tmp_path))
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 10]
    frames = list(open_source(str(tmp_path / "f1*.png")))
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 10]
    single = list(open_source(tmp_path / "f2.png"))
    assert len(single) == 1 and int(single[0].image[0, 0, 0]) == 2


def test_gray_rgba_16bit_become_bgr_and_resolution_change_is_flagged(tmp_path: Path) -> None:
    gray = np.full((10, 12), 77, np.uint8)
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., :3] = (1, 2, 3)
    bgra[..., 3] = 128
    deep = np.full((10, 12), 0x8000, np.uint16)
    bigger = np.full((20, 30, 3), 5, np.uint8)
    for name, img in [("a.png", gray), ("b.png", bgra), ("c.png", deep), ("d.png", bigger)]:
        assert cv2.imwrite(str(tmp_path / name), img)
    frames = list(open_source(tmp_path))
    assert all(f.image.ndim == 3 and f.image.shape[2] == 3 and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].image[0, 0].tolist() == [77, 77, 77]
    assert frames[1].image[0, 0].tolist() == [1, 2, 3]
    assert frames[2].image[0, 0].tolist() == [128, 128, 128]
    assert [f.resolution_changed for f in frames] == [False, False, False, True]
    assert frames[3].source_hw == (20, 30)


def test_to_bgr_u8_rejects_non_images() -> None:
    assert to_bgr_u8(np.ones((4, 5, 1), np.float32)).tolist() == np.full((4, 5, 3), 255, np.uint8).tolist()
    with pytest.raises(SourceError, match=r"shape \(4, 5, 2\).*expected \(H, W\)"):
        to_bgr_u8(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(SourceError, match="pixel type int32"):
        to_bgr_u8(np.zeros((4, 5), np.int32))


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=f"{p} does not exist.*check the path"):
        open_source(p)


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.mp4"
    p.touch()
    with pytest.raises(SourceError, match=r"empty.mp4 is empty \(0 bytes\)"):
        open_source(p)


def test_garbage_file(tmp_path: Path) -> None:
    p = tmp_path / "garbage.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"garbage.mp4 \(4096 bytes\) cannot be opened.*ffprobe"):
        open_source(p)


def test_video_with_no_decodable_frames(tmp_path: Path) -> None:
    good = tmp_path / "good.avi"
    _write_video(good, 3, fourcc="MJPG")
    data = good.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: data.find(b"movi") + 4])  # valid header, no frame data
    with pytest.raises(SourceError, match="cut.avi .* opens but has no decodable frames"):
        open_source(cut)


def test_corrupt_image_in_folder(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "1.png").write_bytes(b"not a png")
    src = open_source(tmp_path)
    assert next(src).index == 0
    with pytest.raises(SourceError, match="cannot decode image .*1.png"):
        next(src)


def test_unreadable_camera_index() -> None:
    with pytest.raises(SourceError, match=r"camera 57 cannot be opened; available: .*check permissions"):
        open_source(57)
    with pytest.raises(SourceError, match=r"camera /dev/video57 cannot be opened.*available"):
        open_source("/dev/video57")


def test_unknown_scheme_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="scheme 'ftp://' is not supported"):
        open_source("ftp://127.0.0.1/x")
    with pytest.raises(SourceError, match="has no image files"):
        open_source(str(tmp_path / "*.png"))


class _FakeCapture:
    """Produces ``n`` frames as fast as possible (pixel value = frame number), then fails; sets ``done``."""

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0
        self.done = threading.Event()
        self.released = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.i >= self.n:
            self.done.set()
            return False, None
        img = np.full((2, 3, 3), self.i, np.uint8)
        self.i += 1
        return True, img

    def release(self) -> None:
        self.released = True


def test_live_queue_drops_oldest() -> None:
    cap = _FakeCapture(20)
    src = Source.from_capture(cap, name="fake", live=True, queue_size=4)
    assert cap.done.wait(5.0)  # the consumer has not read anything yet: the queue holds the newest 4
    frames = list(src)
    assert [f.index for f in frames] == [16, 17, 18, 19]
    assert [int(f.image[0, 0, 0]) for f in frames] == [16, 17, 18, 19]
    assert src.dropped == 16 and cap.released


def test_live_slow_consumer_keeps_order_and_counts_drops() -> None:
    cap = _FakeCapture(200)
    src = Source.from_capture(cap, name="fake", live=True, queue_size=2)
    got = []
    for f in src:
        got.append(f.index)
        time.sleep(0.002)  # slower than the capture
    assert got == sorted(got) and len(set(got)) == len(got)
    assert got[-1] == 199  # the newest frame is never dropped
    assert len(got) + src.dropped == 200


def test_file_source_as_non_live_never_drops() -> None:
    cap = _FakeCapture(50)
    src = Source.from_capture(cap, name="fake", live=False)
    assert [f.index for f in src] == list(range(50)) and src.dropped == 0


def test_drop_oldest_queue_unit() -> None:
    q = DropOldestQueue(2)
    for i in range(5):
        q.put(i)
    assert q.dropped == 3
    assert q.get(0.01) == 3 and q.get(0.01) == 4
    assert q.get(0.01) is None  # empty, still open: timed out
    q.close()
    assert q.get(0.01) is not None  # the end sentinel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:port without connecting (ffmpeg -listen serves one client only)."""
    deadline = time.monotonic() + timeout
    needle = f"0100007F:{port:04X} 00000000:0000 0A"  # /proc/net/tcp: local 127.0.0.1:port, state LISTEN
    while time.monotonic() < deadline:
        try:
            if needle in Path("/proc/net/tcp").read_text():
                return
        except OSError:
            time.sleep(1.0)  # no procfs: give the server a second and let open_source's retries do the rest
            return
        time.sleep(0.05)


FAST = ReconnectPolicy(
    attempts=3, base_delay_s=0.05, max_delay_s=0.2, open_timeout_s=2.0, read_timeout_s=2.0, stall_timeout_s=10.0
)


NO_FFMPEG = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg not installed: no local stream server to test against"
)


def _serve(port: int, size: str = "160x120") -> subprocess.Popen:
    """An HTTP MPEG-TS test-pattern server on loopback that serves one client (ffmpeg -listen 1)."""
    server = subprocess.Popen(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size={size}:rate=15",
            "-f",
            "mpegts",
            "-listen",
            "1",
            f"http://127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port)
    return server


@NO_FFMPEG
def test_http_stream_reads_then_fails_cleanly_when_server_dies() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(port)
    try:
        src = open_source(url, reconnect=FAST)
        assert src.is_live
        frames = [next(src) for _ in range(3)]
        assert all(f.image.shape == (120, 160, 3) for f in frames)
        server.kill()
        server.wait(5)
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=f"stream {url} lost after 3 reconnect attempts"):
            for _ in range(10_000):
                next(src)
        assert time.monotonic() - t0 < 60  # a hang guard, not a timing check: reconnects are bounded
        with pytest.raises(StopIteration):
            next(src)
    finally:
        server.kill()
        server.wait(5)


def test_rtsp_nothing_listening_fails_after_retries() -> None:
    url = f"rtsp://127.0.0.1:{_free_port()}/x"
    with pytest.raises(SourceError, match=f"stream {url} cannot be opened after 2 tries"):
        open_source(url, reconnect=ReconnectPolicy(attempts=1, base_delay_s=0.01, open_timeout_s=1.0))


@NO_FFMPEG
def test_http_stream_reconnects_to_a_restarted_server() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    servers = [_serve(port)]
    try:
        policy = ReconnectPolicy(
            attempts=6, base_delay_s=0.2, max_delay_s=1.0, open_timeout_s=2.0, read_timeout_s=2.0, stall_timeout_s=15.0
        )
        with open_source(url, reconnect=policy) as src:
            assert next(src).source_hw == (120, 160)
            servers[0].kill()
            servers[0].wait(5)
            servers.append(_serve(port, size="96x64"))  # same URL, new resolution
            seen = None
            for _ in range(1000):  # buffered frames of the old server first, then the new one
                f = next(src)
                if f.source_hw == (64, 96):
                    seen = f
                    break
            assert seen is not None and seen.resolution_changed
            assert next(src).source_hw == (64, 96)  # the stream goes on
    finally:
        for s in servers:
            s.kill()
            s.wait(5)
