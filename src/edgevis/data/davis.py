"""DAVIS-style layout: JPEG frames and palette-PNG object-index annotations.

    <root>/JPEGImages/<resolution>/<seq>/00000.jpg
    <root>/Annotations/<resolution>/<seq>/00000.png   palette PNG, pixel = object index 1..N, 0 = background
    <root>/ImageSets/<year>/<split>.txt                one sequence name per line

The resolution folder is only a name ("480p" in DAVIS); frames are written at the clip's own size.
Label 255 is DAVIS' void; ``read_davis`` drops it from the masks (use ``read_palette_png`` to see it).

Palette PNGs go through Pillow, imported lazily (matplotlib, a declared dependency, requires it). cv2 is
no use here: ``cv2.imread(..., IMREAD_UNCHANGED)`` expands a palette PNG to BGR colours, losing indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edgevis.data.synthetic import SyntheticClip, labels_to_masks, masks_to_labels
from edgevis.errors import EdgevisError, MissingDependencyError


def _davis_palette() -> np.ndarray:
    """(256, 3) uint8 RGB: the PASCAL VOC colour map that DAVIS annotations use (1 dark red, 2 green, ...)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):  # spread the index bits over the high bits of r, g, b
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


DAVIS_PALETTE: np.ndarray = _davis_palette()  # (256, 3) uint8, RGB order as stored in the PNG PLTE chunk


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise MissingDependencyError(
            "palette PNG masks need Pillow, which is not installed; install it with `pip install pillow`."
        ) from e
    return Image


def write_palette_png(path: str | Path, indices: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an (H, W) uint8 index image as an 8-bit palette PNG (DAVIS palette unless given, RGB)."""
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.size == 0:
        raise EdgevisError(f"write_palette_png expects a non-empty (H, W) index array; got shape {idx.shape}.")
    if idx.dtype != np.uint8:
        if idx.min() < 0 or idx.max() > 255:
            raise EdgevisError(
                f"palette PNG indices must be in 0..255; got values {idx.min()}..{idx.max()} ({idx.dtype})."
            )
        idx = idx.astype(np.uint8)
    pal = DAVIS_PALETTE if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    image = _pil()
    im = image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes())
    im.putpalette(pal.ravel().tolist())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(str(path), format="PNG")


def read_palette_png(path: str | Path) -> np.ndarray:
    """Read the (H, W) uint8 indices of a palette (or 8-bit grey) PNG, e.g. a DAVIS annotation."""
    p = Path(path)
    if not p.is_file():
        raise EdgevisError(
            f"mask PNG {str(p)!r} does not exist; expected a palette PNG such as Annotations/480p/<seq>/00000.png."
        )
    image = _pil()
    with image.open(p) as im:
        if im.mode not in ("P", "L"):
            raise EdgevisError(
                f"mask PNG {str(p)!r} has mode {im.mode!r}; expected an indexed (palette, 'P') or 8-bit grey ('L') PNG "
                "whose pixel values are object indices. Write masks with edgevis.data.write_palette_png."
            )
        return np.array(im, dtype=np.uint8)  # (H, W)


def _read_frame(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EdgevisError(f"cannot read frame {str(path)!r}; expected a readable JPEG/PNG image.")
    return img  # (H, W, 3) BGR


def write_davis(
    root: str | Path,
    clips: Sequence[SyntheticClip],
    *,
    split: str = "val",
    year: str = "2017",
    resolution: str = "480p",
    jpeg_quality: int = 95,
) -> Path:
    """Write clips in the DAVIS layout under root; returns root. Object i of a clip gets index i+1."""
    root = Path(root)
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise EdgevisError(f"clip names must be unique to become DAVIS sequence folders; got {names}.")
    for clip in clips:
        img_dir = root / "JPEGImages" / resolution / clip.name
        ann_dir = root / "Annotations" / resolution / clip.name
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        labels = masks_to_labels(clip.masks)  # (T, H, W)
        for t in range(clip.num_frames):
            cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), clip.frames[t], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            write_palette_png(ann_dir / f"{t:05d}.png", labels[t])
    sets = root / "ImageSets" / year
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def read_davis(
    root: str | Path,
    *,
    split: str = "val",
    year: str = "2017",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
) -> list[SyntheticClip]:
    """Read DAVIS sequences back as clips (classes are 0: DAVIS has none; track ids are 1..N).

    sequences default to ImageSets/<year>/<split>.txt, or every folder of Annotations/<resolution>.
    N is the largest object index in the sequence's annotations (void 255 excluded); frames without an
    annotation PNG get empty masks.
    """
    root = Path(root)
    ann_root = root / "Annotations" / resolution
    if sequences is None:
        listing = root / "ImageSets" / year / f"{split}.txt"
        if listing.is_file():
            sequences = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
        elif ann_root.is_dir():
            sequences = sorted(p.name for p in ann_root.iterdir() if p.is_dir())
        else:
            raise EdgevisError(
                f"{str(root)!r} is not a DAVIS root: neither {str(listing)!r} nor {str(ann_root)!r} exists. "
                "Expected JPEGImages/<res>/<seq>/, Annotations/<res>/<seq>/ and ImageSets/<year>/<split>.txt."
            )
    clips = []
    for seq in sequences:
        img_paths = sorted((root / "JPEGImages" / resolution / seq).glob("*.jpg"))
        if not img_paths:
            raise EdgevisError(
                f"DAVIS sequence {seq!r} has no frames in {str(root / 'JPEGImages' / resolution / seq)!r}."
            )
        frames = np.stack([_read_frame(p) for p in img_paths])  # (T, H, W, 3)
        labels = np.zeros(frames.shape[:3], np.uint8)  # (T, H, W)
        for t, p in enumerate(img_paths):
            png = ann_root / seq / (p.stem + ".png")
            if png.is_file():
                lab = read_palette_png(png)
                if lab.shape != frames.shape[1:3]:
                    raise EdgevisError(
                        f"annotation {str(png)!r} is {lab.shape[1]}x{lab.shape[0]} but its frame is "
                        f"{frames.shape[2]}x{frames.shape[1]}; annotations must match their frames."
                    )
                labels[t] = lab
        objects = labels[labels != 255]
        n = int(objects.max()) if objects.size else 0
        clips.append(
            SyntheticClip(
                frames=frames,
                masks=labels_to_masks(labels, n),
                track_ids=list(range(1, n + 1)),
                classes=[0] * n,
                name=seq,
            )
        )
    return clips
