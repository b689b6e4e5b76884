"""COCO run-length encoding of binary masks, in numpy (no pycocotools).

An RLE is ``{"size": [h, w], "counts": ...}``. The mask is flattened in column-major (Fortran) order
and ``counts`` alternates run lengths of 0s and 1s, starting with 0s (a mask starting with a 1 has a
leading count of 0). ``counts`` is either a list of ints (the "uncompressed" RLE of YouTube-VIS train
annotations) or the compressed ASCII string that pycocotools' ``mask.encode`` produces (results files).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgevis.errors import EdgevisError

RLE = dict  # {"size": [h, w], "counts": list[int] | str}


def rle_encode(mask: np.ndarray, compressed: bool = False) -> RLE:
    """(H, W) bool mask -> RLE; ``compressed`` gives the pycocotools string form of ``counts``."""
    if mask.ndim != 2:
        raise EdgevisError(f"rle_encode expects one (H, W) mask; got shape {mask.shape}. Encode frames one at a time.")
    h, w = mask.shape
    flat = np.asarray(mask, bool).ravel(order="F")  # (H*W,) column-major
    if flat.size == 0:
        counts: list[int] = []
    else:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat[0]:
            counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": counts_to_string(counts) if compressed else counts}


def rle_counts(rle: object) -> tuple[int, int, np.ndarray]:
    """Check an RLE and return (h, w, counts as an int64 array), whichever form counts has."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise EdgevisError(
            f"expected an RLE dict {{'size': [h, w], 'counts': list or str}}; got {type(rle).__name__} "
            f"{str(rle)[:80]}. Polygon segmentations are not supported; convert them to RLE."
        )
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    counts = _string_to_array(counts) if isinstance(counts, str) else np.asarray(counts, np.int64).reshape(-1)
    total = int(counts.sum())
    if total != h * w or (counts < 0).any():
        raise EdgevisError(
            f"RLE counts sum to {total} but size {h}x{w} needs {h * w} (and no count may be negative); "
            "the RLE is corrupt or its size is wrong."
        )
    return h, w, counts


def rle_runs(rle: RLE) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Foreground runs of an RLE as (starts, ends) indices into the column-major flat mask, and (h, w)."""
    h, w, counts = rle_counts(rle)
    bounds = np.cumsum(counts)
    return bounds[0::2][: len(counts) // 2], bounds[1::2], (h, w)


def rle_decode(rle: RLE) -> np.ndarray:
    """RLE -> (H, W) bool mask."""
    h, w, counts = rle_counts(rle)
    values = np.arange(len(counts)) % 2 == 1  # 0s first, then 1s, alternating
    flat = np.repeat(values, counts)  # (H*W,) column-major
    return flat.reshape((h, w), order="F")


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels, without decoding."""
    _, _, counts = rle_counts(rle)
    return int(counts[1::2].sum())


def counts_to_string(counts: list[int]) -> str:
    """Compress run lengths as pycocotools does: each count (after the second, the difference to the
    count two places back) in 5-bit groups, least significant first, sign-extended, 0x20 = more groups,
    each group offset by 48 into printable ASCII."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            g = x & 0x1F
            x >>= 5  # arithmetic shift: negative values stay negative
            more = (x != -1) if (g & 0x10) else (x != 0)
            out.append(chr(48 + (g | 0x20 if more else g)))
    return "".join(out)


def string_to_counts(s: str) -> list[int]:
    """Inverse of counts_to_string."""
    return _string_to_array(s).tolist()


def _string_to_array(s: str) -> np.ndarray:
    """Vectorised decoding: one numpy pass over the characters."""
    if not s:
        return np.zeros(0, np.int64)
    g = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48  # (L,) 6-bit groups
    last = (g & 0x20) == 0  # a group without the "more" bit ends a count
    if not last[-1]:
        raise EdgevisError(f"compressed RLE string ends inside a count: {s[:60]!r}")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(len(g)) - np.repeat(starts, ends - starts + 1)  # position of each group in its count
    x = np.add.reduceat((g & 0x1F) << (5 * k), starts)  # (M,) unsigned values
    negative = (g[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * (k[ends[negative]] + 1))  # sign-extend from the last group's top bit
    # counts after the second are stored as differences to the count two places back
    counts = x.copy()
    counts[1::2] = np.cumsum(x[1::2])
    counts[2::2] = np.cumsum(x[2::2])
    return counts


def mask_bbox(mask: np.ndarray) -> list[float] | None:
    """[x, y, w, h] of the pixels set in an (H, W) mask, or None when it is empty (COCO convention)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]
