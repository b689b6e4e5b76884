"""YouTube-VIS 2019 layout: annotation json, JPEG frame folders and results files.

    <root>/JPEGImages/<video>/00000.jpg
    <root>/<json_name>      {"info", "licenses", "videos", "annotations", "categories"}

A video is ``{"id", "width", "height", "length", "file_names": ["<video>/00000.jpg", ...]}``. An
annotation is one object track: ``{"id", "video_id", "category_id", "iscrowd", "height", "width",
"segmentations", "areas", "bboxes"}``, the last three holding one entry per frame (None where the object
is absent); segmentations are uncompressed RLE (counts as a list), as in the YouTube-VIS train json.

A results file is a json list of ``{"video_id", "score", "category_id", "segmentations"}`` with one RLE
per frame (compressed strings, as pycocotools writes them). In memory, a prediction may instead carry
``"masks"``: a (T, H, W) bool array; ``write_ytvis_results`` encodes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edgevis.data.rle import mask_bbox, rle_decode, rle_encode
from edgevis.data.synthetic import CATEGORIES, SyntheticClip
from edgevis.errors import EdgevisError


def clip_annotations(clip: SyntheticClip, video_id: int, first_ann_id: int) -> list[dict]:
    """YouTube-VIS annotation dicts (one per object) for a clip; annotation ids count up from first_ann_id."""
    anns = []
    for i in range(clip.num_objects):
        segs, areas, boxes = [], [], []
        for t in range(clip.num_frames):
            m = clip.masks[t, i]  # (H, W)
            area = int(m.sum())
            segs.append(rle_encode(m) if area else None)
            areas.append(area if area else None)
            boxes.append(mask_bbox(m))
        anns.append(
            {
                "id": first_ann_id + i,
                "video_id": video_id,
                "category_id": int(clip.classes[i]),
                "iscrowd": 0,
                "height": clip.height,
                "width": clip.width,
                "segmentations": segs,
                "areas": areas,
                "bboxes": boxes,
            }
        )
    return anns


def write_ytvis(
    root: str | Path,
    clips: Sequence[SyntheticClip],
    *,
    json_name: str = "instances.json",
    categories: Sequence[tuple[int, str]] = CATEGORIES,
    jpeg_quality: int = 95,
) -> Path:
    """Write clips as a YouTube-VIS dataset under root; returns the json path.

    Video ids are 1..V in the order of clips; annotation ids are assigned 1, 2, ... across the dataset
    (the clips' own track_ids are not kept: YouTube-VIS identifies a track by its annotation id).
    """
    root = Path(root)
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise EdgevisError(f"clip names must be unique to become YouTube-VIS video folders; got {names}.")
    videos, anns = [], []
    for vid, clip in enumerate(clips, start=1):
        folder = root / "JPEGImages" / clip.name
        folder.mkdir(parents=True, exist_ok=True)
        file_names = []
        for t in range(clip.num_frames):
            rel = f"{clip.name}/{t:05d}.jpg"
            cv2.imwrite(str(root / "JPEGImages" / rel), clip.frames[t], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            file_names.append(rel)
        videos.append(
            {"id": vid, "width": clip.width, "height": clip.height, "length": clip.num_frames, "file_names": file_names}
        )
        anns.extend(clip_annotations(clip, vid, len(anns) + 1))
    doc = {
        "info": {"description": "edgevis synthetic video instance segmentation", "version": "1.0"},
        "licenses": [],
        "videos": videos,
        "annotations": anns,
        "categories": [{"id": int(i), "name": n, "supercategory": "shape"} for i, n in categories],
    }
    path = root / json_name
    path.write_text(json.dumps(doc))
    return path


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise EdgevisError(f"{what} {str(path)!r} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgevisError(f"{what} {str(path)!r} is not valid json ({e}).") from e


def read_ytvis(root: str | Path, *, json_name: str = "instances.json") -> dict[int, SyntheticClip]:
    """Read a YouTube-VIS dataset into clips keyed by video id (json order).

    Each clip's track_ids are the annotation ids and its classes the category ids. Only videos and
    annotations are needed from the json; frames are read from JPEGImages/<file_names>.
    """
    root = Path(root)
    doc = _load_json(root / json_name, "YouTube-VIS annotation file")
    if not isinstance(doc, dict) or "videos" not in doc or "annotations" not in doc:
        raise EdgevisError(
            f"{str(root / json_name)!r} is not a YouTube-VIS annotation file: expected an object with 'videos' and "
            f"'annotations'; got keys {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}."
        )
    by_video: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_video.setdefault(int(ann["video_id"]), []).append(ann)
    clips = {}
    for v in doc["videos"]:
        h, w, files = int(v["height"]), int(v["width"]), v["file_names"]
        frames = np.empty((len(files), h, w, 3), np.uint8)  # (T, H, W, 3)
        for t, rel in enumerate(files):
            img = cv2.imread(str(root / "JPEGImages" / rel), cv2.IMREAD_COLOR)
            if img is None or img.shape[:2] != (h, w):
                got = "unreadable" if img is None else f"{img.shape[1]}x{img.shape[0]}"
                raise EdgevisError(
                    f"frame {str(root / 'JPEGImages' / rel)!r} is {got}; expected a readable {w}x{h} image as video "
                    f"{v['id']} declares."
                )
            frames[t] = img
        anns = by_video.get(int(v["id"]), [])
        masks = np.zeros((len(files), len(anns), h, w), bool)  # (T, N, H, W)
        for i, ann in enumerate(anns):
            segs = ann["segmentations"]
            if len(segs) != len(files):
                raise EdgevisError(
                    f"annotation {ann['id']} has {len(segs)} segmentations but video {v['id']} has {len(files)} frames."
                )
            for t, seg in enumerate(segs):
                if seg is not None:
                    masks[t, i] = rle_decode(seg)
        clips[int(v["id"])] = SyntheticClip(
            frames=frames,
            masks=masks,
            track_ids=[int(a["id"]) for a in anns],
            classes=[int(a["category_id"]) for a in anns],
            name=str(files[0]).split("/")[0] if files else str(v["id"]),
        )
    return clips


def prediction_from_masks(video_id: int, masks: np.ndarray, category_id: int, score: float) -> dict:
    """A results entry for one predicted track: masks (T, H, W) bool -> per-frame compressed RLE."""
    if masks.ndim != 3:
        raise EdgevisError(f"a predicted track needs (T, H, W) masks; got shape {masks.shape}.")
    return {
        "video_id": int(video_id),
        "score": float(score),
        "category_id": int(category_id),
        "segmentations": [rle_encode(m, compressed=True) for m in np.asarray(masks, bool)],
    }


def tracks_to_predictions(video_id: int, results: Sequence, hw: tuple[int, int]) -> list[dict]:
    """FrameResults of one clip -> YouTube-VIS predictions, one per track id (mean score, majority class)."""
    by_id: dict[int, dict] = {}
    for t, r in enumerate(results):
        for i, tid in enumerate(r.track_ids):
            e = by_id.setdefault(int(tid), {"masks": np.zeros((len(results), *hw), bool), "scores": [], "cls": []})
            e["masks"][t] = r.masks[i]
            e["scores"].append(float(r.scores[i]))
            e["cls"].append(int(r.class_ids[i]))
    return [{"video_id": video_id, "score": float(np.mean(e["scores"])),
             "category_id": int(np.bincount(e["cls"]).argmax()), "masks": e["masks"]} for e in by_id.values()]


def write_ytvis_results(path: str | Path, predictions: Sequence[dict]) -> Path:
    """Write predictions as a YouTube-VIS results json (a list); entries with "masks" are RLE-encoded."""
    out = []
    for k, p in enumerate(predictions):
        missing = {"video_id", "score", "category_id"} - set(p)
        if missing or ("segmentations" not in p and "masks" not in p):
            raise EdgevisError(
                f"prediction {k} lacks {sorted(missing) or ['segmentations or masks']}; expected keys video_id, score, "
                "category_id and segmentations (per-frame RLE) or masks ((T, H, W) bool)."
            )
        if "segmentations" in p:
            out.append({k2: p[k2] for k2 in ("video_id", "score", "category_id", "segmentations")})
        else:
            out.append(prediction_from_masks(p["video_id"], p["masks"], p["category_id"], p["score"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return path


def read_ytvis_results(path: str | Path) -> list[dict]:
    """Read a YouTube-VIS results json (segmentations stay RLE dicts; metrics decode them per frame)."""
    doc = _load_json(Path(path), "YouTube-VIS results file")
    if not isinstance(doc, list):
        raise EdgevisError(
            f"{str(path)!r} is not a YouTube-VIS results file: expected a json list of "
            f"{{video_id, score, category_id, segmentations}}; got {type(doc).__name__}."
        )
    return doc
