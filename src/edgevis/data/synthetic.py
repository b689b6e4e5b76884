"""Synthetic video instance segmentation clips with exact ground truth.

Each clip shows textured shapes moving over a textured, slowly panning background. The shape kind is
the class (``CATEGORIES``), so a model can learn it; textures and colours are independent of the class.
Objects have a fixed depth order, so nearer shapes occlude farther ones, and ``masks`` hold only the
VISIBLE part of each object. Objects bounce so that their centre stays in the frame, which lets up to
half of a shape leave the frame. In frame 0 every object is fully inside the frame and (when the
placement allows it) at least half visible, so frame 0 can serve as the first-frame mask for
semi-supervised VOS.

Generation is deterministic given the seed and uses only numpy and cv2 drawing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgevis.errors import EdgevisError

# (id, name): the category id is 1-based, as in YouTube-VIS / COCO.
CATEGORIES: list[tuple[int, str]] = [(1, "ellipse"), (2, "rectangle"), (3, "triangle"), (4, "star"), (5, "cross")]

_SUBPIXEL_SHIFT = 4  # cv2 drawing with 1/16 pixel vertex precision
_MIN_VISIBLE_FRACTION = 0.5  # frame-0 placement target


@dataclass
class SyntheticClip:
    """A clip and its instance ground truth.

    frames: (T, H, W, 3) uint8 BGR. masks: (T, N, H, W) bool, visible part of each object per frame
    (all False where the object is absent). track_ids and classes: one per object (classes are 1-based
    category ids; 0 means unknown, e.g. after reading a DAVIS layout). name: the video/sequence name.
    """

    frames: np.ndarray
    masks: np.ndarray
    track_ids: list[int]
    classes: list[int]
    name: str

    def __post_init__(self) -> None:
        f, m = self.frames, self.masks
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise EdgevisError(
                f"SyntheticClip {self.name!r}: frames must be a (T, H, W, 3) uint8 BGR array; "
                f"got shape {f.shape} dtype {f.dtype}. Convert with frames.astype(np.uint8)."
            )
        if m.ndim != 4 or m.dtype != bool or m.shape[0] != f.shape[0] or m.shape[2:] != f.shape[1:3]:
            raise EdgevisError(
                f"SyntheticClip {self.name!r}: masks must be a (T, N, H, W) bool array with T, H, W of frames "
                f"{f.shape[:3]}; got shape {m.shape} dtype {m.dtype}."
            )
        n = m.shape[1]
        if len(self.track_ids) != n or len(self.classes) != n:
            raise EdgevisError(
                f"SyntheticClip {self.name!r}: expected {n} track_ids and classes (one per mask); "
                f"got {len(self.track_ids)} track_ids and {len(self.classes)} classes."
            )

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[1])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def masks_to_labels(masks: np.ndarray) -> np.ndarray:
    """(..., N, H, W) bool masks -> (..., H, W) uint8 label map, object i -> value i+1, 0 background.

    Where masks overlap, the higher index wins (synthetic masks are disjoint, so this never happens).
    """
    n = masks.shape[-3]
    if n > 254:
        raise EdgevisError(f"label maps hold at most 254 objects (255 is void); got {n} masks.")
    labels = np.zeros(masks.shape[:-3] + masks.shape[-2:], np.uint8)  # (..., H, W)
    for i in range(n):
        labels[masks[..., i, :, :]] = i + 1
    return labels


def labels_to_masks(labels: np.ndarray, num_objects: int) -> np.ndarray:
    """(..., H, W) integer label map -> (..., N, H, W) bool masks for objects 1..num_objects."""
    ids = np.arange(1, num_objects + 1).reshape((num_objects, 1, 1))
    return labels[..., None, :, :] == ids  # (..., N, H, W)


# ----------------------------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float32 in about [-1, 1]: bicubic upsampling of a coarse random grid."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _pattern(rng: np.random.Generator, h: int, w: int, period: tuple[float, float]) -> np.ndarray:
    """(h, w) float32 in [0, 1]: stripes, checker or blobs at a random angle and period."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    u = xx * np.cos(phi) + yy * np.sin(phi)
    v = -xx * np.sin(phi) + yy * np.cos(phi)
    p = rng.uniform(*period)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        out = 0.5 + 0.5 * np.sin(2 * np.pi * u / p)
    elif kind == 1:  # checker
        out = (np.sin(2 * np.pi * u / p) * np.sin(2 * np.pi * v / p) > 0).astype(np.float32)
        out = cv2.GaussianBlur(out, (0, 0), 0.7)
    else:  # blobs
        out = 0.5 + 0.5 * np.tanh(3.0 * _smooth_noise(rng, h, w, max(2, int(p / 2))))
    return out.astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, period: tuple[float, float], saturated: bool) -> np.ndarray:
    """(h, w, 3) uint8 BGR texture: two colours mixed by a pattern, smooth noise and grain."""
    lo, hi = (30, 255) if saturated else (40, 200)
    c1 = rng.uniform(lo, hi, 3).astype(np.float32)
    c2 = rng.uniform(lo, hi, 3).astype(np.float32)
    if saturated:  # push one channel down so objects are colourful
        c1[rng.integers(3)] *= 0.3
        c2[rng.integers(3)] *= 0.3
    mix = 0.65 * _pattern(rng, h, w, period) + 0.35 * (0.5 + 0.5 * _smooth_noise(rng, h, w, 24))
    tex = c1 * (1.0 - mix[..., None]) + c2 * mix[..., None]  # (h, w, 3)
    tex += rng.normal(0.0, 4.0, tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- shapes


def _shape_polygon(kind: int, rng: np.random.Generator) -> np.ndarray:
    """(V, 2) float32 vertices of a shape of unit radius centred at 0; kind is the category id."""
    if kind == 1:  # ellipse
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        b = rng.uniform(0.55, 0.85)
        return np.stack([np.cos(t), b * np.sin(t)], 1).astype(np.float32)
    if kind == 2:  # rectangle
        b = rng.uniform(0.45, 0.8)
        return np.array([[-1, -b], [1, -b], [1, b], [-1, b]], np.float32) * 0.85
    if kind == 3:  # triangle
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        return np.stack([np.cos(t), np.sin(t)], 1).astype(np.float32)
    if kind == 4:  # five-pointed star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], 1).astype(np.float32)
    if kind == 5:  # plus-shaped cross
        a = rng.uniform(0.28, 0.38)
        q = [(a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1)]
        q = q + [(-x, -y) for x, y in q]
        return np.array(q, np.float32)
    raise AssertionError(f"unknown shape kind {kind}")


@dataclass
class _Object:
    poly: np.ndarray  # (V, 2) unit-radius vertices
    radius: float
    texture: np.ndarray  # (S, S, 3) uint8
    pos: np.ndarray  # (2,) x, y
    vel: np.ndarray  # (2,) pixels per frame
    angle: float
    spin: float
    pulse: tuple[float, float]  # scale oscillation phase, frequency


def _draw(obj: _Object, h: int, w: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-frame (H, W) bool footprint and (H, W, 3) uint8 texture of one object at its current pose."""
    c, s = np.cos(obj.angle) * scale * obj.radius, np.sin(obj.angle) * scale * obj.radius
    rot = np.array([[c, -s], [s, c]], np.float32)
    pts = obj.poly @ rot.T + obj.pos  # (V, 2)
    fp = np.zeros((h, w), np.uint8)
    pts_fixed = np.round(pts * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)
    cv2.fillPoly(fp, [pts_fixed], 1, cv2.LINE_8, _SUBPIXEL_SHIFT)
    # texture patch centre -> object position, rotated and scaled with the shape
    half = (obj.texture.shape[0] - 1) / 2.0
    k = scale * obj.radius / half * 1.2
    ck, sk = np.cos(obj.angle) * k, np.sin(obj.angle) * k
    m = np.array(
        [[ck, -sk, obj.pos[0] - ck * half + sk * half], [sk, ck, obj.pos[1] - sk * half - ck * half]], np.float32
    )
    tex = cv2.warpAffine(obj.texture, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return fp.astype(bool), tex


def _visible(footprints: list[np.ndarray], depth: np.ndarray) -> np.ndarray:
    """(N, H, W) visible masks from footprints, nearest object (depth rank 0) first."""
    vis = np.zeros((len(footprints),) + footprints[0].shape, bool)  # (N, H, W)
    covered = np.zeros(footprints[0].shape, bool)
    for i in np.argsort(depth):
        vis[i] = footprints[i] & ~covered
        covered |= footprints[i]
    return vis


def _step(obj: _Object, rng: np.random.Generator, h: int, w: int, max_speed: float) -> None:
    obj.vel += rng.normal(0.0, 0.25, 2)
    speed = float(np.hypot(*obj.vel))
    if speed > max_speed:
        obj.vel *= max_speed / speed
    obj.pos += obj.vel
    for d, size in ((0, w), (1, h)):  # bounce so the centre stays inside the frame
        if obj.pos[d] < 0:
            obj.pos[d], obj.vel[d] = -obj.pos[d], abs(obj.vel[d])
        elif obj.pos[d] > size - 1:
            obj.pos[d], obj.vel[d] = 2 * (size - 1) - obj.pos[d], -abs(obj.vel[d])
    obj.angle += obj.spin


def _scale(obj: _Object, t: int) -> float:
    return 1.0 + 0.12 * float(np.sin(obj.pulse[0] + obj.pulse[1] * t))


def make_clip(
    seed: int,
    num_frames: int = 30,
    height: int = 256,
    width: int = 448,
    num_objects: int | tuple[int, int] = 3,
    num_classes: int = 4,
    *,
    max_speed: float = 5.0,
    pan_speed: float = 0.6,
    noise_std: float = 0.0,
    flicker: float = 0.0,
    name: str | None = None,
) -> SyntheticClip:
    """Generate one deterministic clip.

    num_objects: a count, or an inclusive (low, high) range drawn from the seed. num_classes: classes are
    drawn from category ids 1..num_classes (at most len(CATEGORIES)). max_speed: object speed cap in
    pixels per frame. pan_speed: background drift in pixels per frame. noise_std: camera-like Gaussian
    pixel noise (in 0..255 units). flicker: global brightness gain varies per frame in [1-flicker, 1+flicker].
    """
    if not 1 <= num_classes <= len(CATEGORIES):
        raise EdgevisError(f"num_classes must be in 1..{len(CATEGORIES)} (len(CATEGORIES)); got {num_classes}.")
    if num_frames < 1 or height < 16 or width < 16:
        raise EdgevisError(
            f"need num_frames >= 1 and height, width >= 16; got num_frames={num_frames}, height={height}, width={width}."
        )
    if seed < 0:
        raise EdgevisError(f"seed must be a non-negative int; got {seed}.")
    rng = np.random.default_rng(seed)
    if isinstance(num_objects, tuple):
        num_objects = int(rng.integers(num_objects[0], num_objects[1] + 1))
    if num_objects < 0:
        raise EdgevisError(f"num_objects must be >= 0; got {num_objects}.")

    pad = int(np.ceil(pan_speed * num_frames / 2)) + 2
    bg = _texture(rng, height + 2 * pad, width + 2 * pad, (12.0, 60.0), saturated=False)  # (H+2p, W+2p, 3)
    classes = [int(c) for c in rng.integers(1, num_classes + 1, num_objects)]
    depth = rng.permutation(num_objects)  # depth rank, 0 is nearest
    base_r = min(height, width)
    objs = []
    for kind in classes:
        r = float(rng.uniform(0.09, 0.17) * base_r)
        size = 2 * int(np.ceil(r * 1.25)) + 1
        objs.append(
            _Object(
                poly=_shape_polygon(kind, rng),
                radius=r,
                texture=_texture(rng, size, size, (5.0, 16.0), saturated=True),
                pos=np.zeros(2),
                vel=rng.normal(0.0, 1.0, 2) * max_speed / 2,
                angle=float(rng.uniform(0, 2 * np.pi)),
                spin=float(rng.uniform(-0.05, 0.05)),
                pulse=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.05, 0.2))),
            )
        )

    # frame-0 placement: fully inside, each object at least half visible (best of a few tries)
    best, best_frac = None, -1.0
    for _ in range(30 if num_objects else 0):
        pos = [
            np.array(
                [
                    rng.uniform(o.radius * 1.15, width - o.radius * 1.15),
                    rng.uniform(o.radius * 1.15, height - o.radius * 1.15),
                ]
            )
            for o in objs
        ]
        for o, p in zip(objs, pos, strict=True):
            o.pos = p
        fps = [_draw(o, height, width, _scale(o, 0))[0] for o in objs]
        vis = _visible(fps, depth)
        frac = min(float(v.sum()) / max(1.0, float(f.sum())) for v, f in zip(vis, fps, strict=True))
        if frac > best_frac:
            best, best_frac = pos, frac
        if frac >= _MIN_VISIBLE_FRACTION:
            break
    for o, p in zip(objs, best or [], strict=True):
        o.pos = p.copy()

    frames = np.empty((num_frames, height, width, 3), np.uint8)  # (T, H, W, 3)
    masks = np.zeros((num_frames, num_objects, height, width), bool)  # (T, N, H, W)
    pan = np.array([pad, pad], np.float64)
    pan_vel = rng.normal(0.0, 1.0, 2)
    pan_vel *= pan_speed / max(1e-6, float(np.hypot(*pan_vel)))
    cam_rng = np.random.default_rng([seed, 1])  # camera effects draw apart, so they leave the scene unchanged
    for t in range(num_frames):
        if t > 0:
            for o in objs:
                _step(o, rng, height, width, max_speed)
            pan = np.clip(pan + pan_vel, 0, 2 * pad)
        ox, oy = int(round(pan[0])), int(round(pan[1]))
        frame = bg[oy : oy + height, ox : ox + width].copy()  # (H, W, 3)
        if num_objects:
            drawn = [_draw(o, height, width, _scale(o, t)) for o in objs]
            vis = _visible([d[0] for d in drawn], depth)
            for i, (_, tex) in enumerate(drawn):
                frame[vis[i]] = tex[vis[i]]
            masks[t] = vis
        if noise_std > 0 or flicker > 0:
            f = frame.astype(np.float32) * (1.0 + flicker * float(cam_rng.uniform(-1.0, 1.0)))
            if noise_std > 0:
                f += cam_rng.normal(0.0, noise_std, f.shape).astype(np.float32)
            frame = np.clip(f + 0.5, 0, 255).astype(np.uint8)
        frames[t] = frame
    return SyntheticClip(
        frames=frames,
        masks=masks,
        track_ids=list(range(1, num_objects + 1)),
        classes=classes,
        name=name if name is not None else f"synth_{seed}",
    )


def make_dataset(n_clips: int, seed: int, **kw) -> list[SyntheticClip]:
    """n_clips deterministic clips named synth_0000, synth_0001, ...; kw go to make_clip."""
    seeds = np.random.SeedSequence(seed).generate_state(n_clips) if n_clips > 0 else []
    return [make_clip(int(s), name=f"synth_{i:04d}", **kw) for i, s in enumerate(seeds)]
