"""YouTube-VIS layout: json + JPEG round trip, results files, and an end-to-end perfect score."""

import json

import numpy as np
import pytest

from edgevis.data import (
    make_dataset,
    prediction_from_masks,
    read_ytvis,
    read_ytvis_results,
    write_ytvis,
    write_ytvis_results,
    ytvis_map,
)
from edgevis.errors import EdgevisError


@pytest.fixture(scope="module")
def clips():
    clips = make_dataset(2, seed=5, num_frames=4, height=48, width=64, num_objects=2)
    clips[1].masks[2, 0] = False  # object absent in one frame
    return clips


def test_json_layout(tmp_path, clips):
    path = write_ytvis(tmp_path, clips)
    doc = json.loads(path.read_text())
    assert set(doc) >= {"videos", "annotations", "categories"}
    v = doc["videos"][1]
    assert v == {**v, "id": 2, "width": 64, "height": 48, "length": 4}
    assert (
        v["file_names"][0] == "synth_0001/00000.jpg"
        and (tmp_path / "JPEGImages" / "synth_0001" / "00003.jpg").is_file()
    )
    ann = doc["annotations"][2]  # first object of video 2
    assert ann["video_id"] == 2 and ann["iscrowd"] == 0 and ann["id"] == 3
    assert ann["segmentations"][2] is None and ann["areas"][2] is None and ann["bboxes"][2] is None
    assert isinstance(ann["segmentations"][0]["counts"], list) and ann["segmentations"][0]["size"] == [48, 64]
    assert ann["areas"][0] == int(clips[1].masks[0, 0].sum())


def test_write_read_round_trip(tmp_path, clips):
    write_ytvis(tmp_path, clips, json_name="train.json")
    back = read_ytvis(tmp_path, json_name="train.json")
    assert list(back) == [1, 2]
    for clip, got in zip(clips, back.values(), strict=True):
        assert got.name == clip.name and got.classes == clip.classes
        assert np.array_equal(got.masks, clip.masks)
        assert np.abs(got.frames.astype(int) - clip.frames.astype(int)).mean() < 6  # JPEG, quality 95
    assert back[2].track_ids == [3, 4]


def test_results_round_trip_and_perfect_score(tmp_path, clips):
    write_ytvis(tmp_path, clips)
    gt = read_ytvis(tmp_path)
    preds = [
        prediction_from_masks(vid, clip.masks[:, i], clip.classes[i], 0.9)
        for vid, clip in gt.items()
        for i in range(clip.num_objects)
    ]
    preds.append({"video_id": 1, "score": 0.1, "category_id": 1, "masks": np.zeros((4, 48, 64), bool)})
    path = write_ytvis_results(tmp_path / "results.json", preds)
    back = read_ytvis_results(path)
    assert len(back) == len(preds) and isinstance(back[0]["segmentations"][0]["counts"], str)
    assert ytvis_map(gt, back)["mAP"] == pytest.approx(1.0)


def test_bad_files_are_reported(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(EdgevisError, match="is not a YouTube-VIS annotation file"):
        read_ytvis(tmp_path, json_name="x.json")
    with pytest.raises(EdgevisError, match="does not exist"):
        read_ytvis(tmp_path / "missing")
    with pytest.raises(EdgevisError, match="prediction 0 lacks"):
        write_ytvis_results(tmp_path / "r.json", [{"video_id": 1, "score": 1.0, "category_id": 1}])
