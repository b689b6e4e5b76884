"""DAVIS layout: palette PNG codec and write/read round trip."""

import cv2
import numpy as np
import pytest

from edgevis.data import DAVIS_PALETTE, make_dataset, read_davis, read_palette_png, write_davis, write_palette_png
from edgevis.errors import EdgevisError


def test_palette_png_round_trip_keeps_indices_and_davis_colours(tmp_path):
    idx = np.zeros((5, 7), np.uint8)
    idx[1:3, 2:6] = 1
    idx[4, :] = 2
    idx[0, 6] = 255  # void
    write_palette_png(tmp_path / "m.png", idx)
    assert np.array_equal(read_palette_png(tmp_path / "m.png"), idx)
    # a colour viewer sees the DAVIS palette: 1 dark red, 2 green, 255 void (RGB 224, 224, 192)
    bgr = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_COLOR)
    assert (
        bgr[1, 2].tolist() == [0, 0, 128]
        and bgr[4, 0].tolist() == [0, 128, 0]
        and bgr[0, 6].tolist() == [192, 224, 224]
    )
    assert DAVIS_PALETTE[3].tolist() == [128, 128, 0]


def test_non_indexed_png_is_rejected_with_the_fix(tmp_path):
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(EdgevisError, match="has mode 'RGB'.*write_palette_png"):
        read_palette_png(tmp_path / "rgb.png")
    with pytest.raises(EdgevisError, match="does not exist"):
        read_palette_png(tmp_path / "none.png")
    with pytest.raises(EdgevisError, match="indices must be in 0..255"):
        write_palette_png(tmp_path / "x.png", np.full((2, 2), 300))


def test_davis_layout_round_trip(tmp_path):
    clips = make_dataset(2, seed=9, num_frames=3, height=40, width=56, num_objects=3)
    write_davis(tmp_path, clips)
    assert (tmp_path / "Annotations" / "480p" / "synth_0000" / "00002.png").is_file()
    assert (tmp_path / "JPEGImages" / "480p" / "synth_0001" / "00000.jpg").is_file()
    assert (tmp_path / "ImageSets" / "2017" / "val.txt").read_text().split() == ["synth_0000", "synth_0001"]
    back = read_davis(tmp_path)
    for clip, got in zip(clips, back, strict=True):
        assert got.name == clip.name and got.track_ids == [1, 2, 3] and got.classes == [0, 0, 0]
        assert np.array_equal(got.masks, clip.masks)
        assert np.abs(got.frames.astype(int) - clip.frames.astype(int)).mean() < 6
    with pytest.raises(EdgevisError, match="is not a DAVIS root"):
        read_davis(tmp_path / "nowhere")
