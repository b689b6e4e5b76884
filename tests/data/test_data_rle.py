"""COCO RLE in numpy: hand-computed encodings, the compressed string form, round trips and errors."""

import numpy as np
import pytest

from edgevis.data import rle_area, rle_decode, rle_encode
from edgevis.data.rle import counts_to_string, mask_bbox, rle_runs, string_to_counts
from edgevis.errors import EdgevisError


def _tiny() -> np.ndarray:
    m = np.zeros((3, 4), bool)  # column-major: 0000 11 000 1 00
    m[1, 1] = m[2, 1] = m[0, 3] = True
    return m


def test_hand_computed_rle():
    assert rle_encode(_tiny()) == {"size": [3, 4], "counts": [4, 2, 3, 1, 2]}
    # the compressed form pycocotools 2.0.11 mask.encode gives for this mask (checked offline)
    assert rle_encode(_tiny(), compressed=True)["counts"] == "423OO"


def test_foreground_runs_index_the_column_major_mask():
    starts, ends, size = rle_runs(rle_encode(_tiny(), compressed=True))
    assert starts.tolist() == [4, 9] and ends.tolist() == [6, 10] and size == (3, 4)


def test_mask_starting_with_foreground_gets_leading_zero_run():
    m = np.ones((2, 2), bool)
    m[1, 1] = False
    assert rle_encode(m)["counts"] == [0, 3, 1]


def test_round_trips_and_area():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 30, 2)
        m = rng.random((h, w)) < rng.random()
        for compressed in (False, True):
            rle = rle_encode(m, compressed)
            assert np.array_equal(rle_decode(rle), m)
            assert rle_area(rle) == m.sum()
    counts = [0, 5, 70000, 3, 1, 1_000_000, 2]
    assert string_to_counts(counts_to_string(counts)) == counts


def test_bbox():
    assert mask_bbox(_tiny()) == [1.0, 0.0, 3.0, 3.0]
    assert mask_bbox(np.zeros((3, 3), bool)) is None


def test_corrupt_rle_is_reported():
    with pytest.raises(EdgevisError, match="counts sum to 5 but size 3x4 needs 12"):
        rle_decode({"size": [3, 4], "counts": [2, 3]})
    with pytest.raises(EdgevisError, match="Polygon segmentations are not supported"):
        rle_decode([[0, 0, 1, 1, 2, 0]])
