"""Frames in, model tensors out, masks back: letterboxing as the IOSpec's Preprocess says."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from edgevis.spec import Preprocess


@dataclass(frozen=True)
class Letterbox:
    """Where the source frame sits inside the model input (top-left, aspect kept, padded bottom/right)."""

    src_hw: tuple[int, int]
    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]


@functools.lru_cache(maxsize=64)  # one entry per (source, input) size pair: every frame of a stream hits it
def letterbox_geometry(src_hw: tuple[int, int], input_hw: tuple[int, int]) -> Letterbox:
    sh, sw = src_hw
    ih, iw = input_hw
    s = min(ih / sh, iw / sw)
    rh, rw = min(ih, max(1, round(sh * s))), min(iw, max(1, round(sw * s)))
    return Letterbox(src_hw=(sh, sw), input_hw=(ih, iw), resized_hw=(rh, rw))


@functools.lru_cache(maxsize=16)
def _normalise_lut(pre: Preprocess) -> np.ndarray:
    """(1, 256, 3) float32 table, BGR channel order: uint8 value -> (v - mean) / std."""
    order = slice(None, None, -1) if pre.channel_order == "RGB" else slice(None)
    mean = np.asarray(pre.mean, np.float32)[order] * pre.scale
    inv_std = 1.0 / (np.asarray(pre.std, np.float32)[order] * pre.scale)
    return ((np.arange(256, dtype=np.float32)[:, None] - mean) * inv_std).reshape(1, 256, 3).astype(np.float32)


def pad_colour(pre: Preprocess) -> np.ndarray:
    """The BGR uint8 colour that normalises to ~0 (letterbox padding)."""
    mean = np.asarray(pre.mean, np.float32) * pre.scale
    bgr = mean[::-1] if pre.channel_order == "RGB" else mean
    return np.clip(np.round(bgr), 0, 255).astype(np.uint8)


def prepare(frame: np.ndarray, input_hw: tuple[int, int], pre: Preprocess) -> tuple[torch.Tensor, Letterbox]:
    """Letterbox a BGR uint8 frame for a stage.

    ``pre.in_graph``: returns uint8 (1, H, W, 3) BGR (the graph normalises). Otherwise float32
    (1, 3, H, W), normalised on the host with a per-channel lookup table.
    """
    lb = letterbox_geometry(frame.shape[:2], tuple(input_hw))
    rh, rw = lb.resized_hw
    img = frame if (rh, rw) == lb.src_hw else cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
    if pre.in_graph:
        if (rh, rw) == tuple(input_hw):
            out = np.ascontiguousarray(img)[None]
        else:
            out = np.empty((1, input_hw[0], input_hw[1], 3), np.uint8)  # (1, H, W, 3)
            out[0] = pad_colour(pre)
            out[0, :rh, :rw] = img
        return torch.from_numpy(out), lb
    out = np.zeros((input_hw[0], input_hw[1], 3), np.float32)  # (H, W, 3), BGR order
    out[:rh, :rw] = cv2.LUT(np.ascontiguousarray(img), _normalise_lut(pre))
    chw = out.transpose(2, 0, 1)
    if pre.channel_order == "RGB":
        chw = chw[::-1]
    return torch.from_numpy(np.ascontiguousarray(chw)[None]), lb  # (1, 3, H, W)


def crop_hw(lb: Letterbox, h: int, w: int) -> tuple[int, int]:
    """Rows and columns of an (h, w) model-resolution map that cover the source (the rest is letterbox
    padding)."""
    return (max(1, min(h, math.ceil(lb.resized_hw[0] * h / lb.input_hw[0]))),
            max(1, min(w, math.ceil(lb.resized_hw[1] * w / lb.input_hw[1]))))


def _crop(maps: torch.Tensor | np.ndarray, lb: Letterbox) -> np.ndarray:
    """The part of model-resolution maps (N, h, w) that covers the source (letterbox padding cut)."""
    ch, cw = crop_hw(lb, *maps.shape[-2:])
    crop = maps[:, :ch, :cw]
    if isinstance(crop, torch.Tensor):
        crop = crop.detach().float().cpu().numpy()
    return crop.astype(np.float32, copy=False)  # (N, ch, cw)


def _resize_planes(crop: np.ndarray, src_hw: tuple[int, int], threshold: float | None) -> np.ndarray:
    """(N, h, w) -> (N, H_src, W_src) bilinear (half-pixel centres, like align_corners=False).

    One plane at a time straight into the output (no (H, W, N) transposes); with ``threshold``
    the result is boolean ``value > threshold`` (the float plane is reused, never kept).
    """
    n = crop.shape[0]
    size = (src_hw[1], src_hw[0])
    if threshold is None:
        out = np.empty((n, *src_hw), np.float32)  # (N, H_src, W_src)
        for i in range(n):
            cv2.resize(crop[i], size, dst=out[i], interpolation=cv2.INTER_LINEAR)
        return out
    out = np.empty((n, *src_hw), bool)  # (N, H_src, W_src)
    plane = np.empty(src_hw, np.float32)  # (H_src, W_src) scratch
    for i in range(n):
        cv2.resize(crop[i], size, dst=plane, interpolation=cv2.INTER_LINEAR)
        np.greater(plane, threshold, out=out[i])
    return out


def crop_to_source(maps: torch.Tensor | np.ndarray, lb: Letterbox) -> np.ndarray:
    """Model-resolution maps (N, h, w) -> float32 (N, H_src, W_src), letterbox padding cropped."""
    if maps.shape[0] == 0:
        return np.zeros((0, *lb.src_hw), np.float32)
    return _resize_planes(_crop(maps, lb), lb.src_hw, None)


def masks_to_source(mask_logits: torch.Tensor | np.ndarray, lb: Letterbox, threshold: float = 0.0) -> np.ndarray:
    """Mask logits (N, h, w) -> boolean masks (N, H_src, W_src) at the source resolution."""
    if mask_logits.shape[0] == 0:
        return np.zeros((0, *lb.src_hw), bool)
    return _resize_planes(_crop(mask_logits, lb), lb.src_hw, threshold)


class LazyMasks:
    """Mask logits at model resolution, upsampled to the source only when someone reads them.

    ``logits`` (N', h, w) is kept by reference, so pass an array nothing writes to afterwards
    (plain backend outputs are fresh tensors every call); ``rows`` (indices or a boolean mask)
    picks the instances shown (None: all). ``materialise()`` is :func:`masks_to_source` on them.
    """

    def __init__(self, logits: torch.Tensor | np.ndarray, lb: Letterbox, threshold: float = 0.0,
                 rows: np.ndarray | None = None) -> None:
        if rows is not None:
            rows = np.asarray(rows)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64, copy=False)
        if isinstance(logits, torch.Tensor) and logits.device.type == "cpu":
            # a numpy view (no copy): post-processing with torch ops would wake torch's OpenMP pool,
            # whose spinning threads then steal the cores from onnxruntime's next call
            logits = logits.detach().numpy()
        self.logits, self.lb, self.threshold, self.rows = logits, lb, threshold, rows
        n = logits.shape[0] if rows is None else len(rows)
        self.shape = (int(n), *lb.src_hw)  # (N, H_src, W_src)

    def materialise(self) -> np.ndarray:
        logits = self.logits if self.rows is None else self.logits[self.rows]
        return masks_to_source(logits, self.lb, self.threshold)  # (N, H_src, W_src) bool
