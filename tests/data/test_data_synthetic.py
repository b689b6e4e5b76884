"""Synthetic clip generator: determinism, occlusion-consistent masks, options and errors."""

import numpy as np
import pytest

from edgevis.data import CATEGORIES, SyntheticClip, labels_to_masks, make_clip, make_dataset, masks_to_labels
from edgevis.errors import EdgevisError

SMALL = dict(num_frames=8, height=64, width=96)


def test_same_seed_same_clip_and_other_seed_differs():
    a, b = make_clip(11, **SMALL), make_clip(11, **SMALL)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert a.classes == b.classes and a.track_ids == b.track_ids
    c = make_clip(12, **SMALL)
    assert not np.array_equal(a.frames, c.frames)


def test_shapes_dtypes_ids_and_classes():
    clip = make_clip(3, num_objects=4, num_classes=5, **SMALL)
    assert clip.frames.shape == (8, 64, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (8, 4, 64, 96) and clip.masks.dtype == bool
    assert clip.track_ids == [1, 2, 3, 4]
    assert all(1 <= c <= 5 for c in clip.classes)
    assert clip.name == "synth_3"


@pytest.mark.parametrize("seed", range(6))
def test_masks_are_disjoint_and_every_object_visible_in_frame0(seed):
    clip = make_clip(seed, num_objects=(2, 5), num_frames=12, height=96, width=160)
    assert clip.masks.sum(axis=1).max() <= 1  # occlusion: a pixel belongs to at most one object
    assert clip.masks[0].any(axis=(1, 2)).all()  # frame 0 shows every object
    # objects stay mostly visible (they bounce with their centre inside the frame)
    assert clip.masks.any(axis=(2, 3)).mean() > 0.8


def test_masks_follow_the_drawn_pixels():
    """The pixels under each visible mask carry the object's texture, not a flat fill."""
    clip = make_clip(5, **SMALL)
    labels = masks_to_labels(clip.masks)  # (T, H, W)
    for t in range(clip.num_frames):
        for i in range(clip.num_objects):
            inside = clip.frames[t][labels[t] == i + 1].astype(float)
            if len(inside) > 50:
                assert inside.std(axis=0).max() > 1.0  # textured, not a flat fill


def test_camera_effects_change_pixels_but_not_the_scene():
    clean = make_clip(4, **SMALL)
    noisy = make_clip(4, noise_std=4.0, flicker=0.1, **SMALL)
    assert np.array_equal(clean.masks, noisy.masks)
    diff = np.abs(clean.frames.astype(int) - noisy.frames.astype(int))
    assert diff.mean() > 1.0


def test_make_dataset_is_deterministic_with_unique_names():
    a = make_dataset(3, seed=1, num_objects=(1, 3), **SMALL)
    b = make_dataset(3, seed=1, num_objects=(1, 3), **SMALL)
    assert [c.name for c in a] == ["synth_0000", "synth_0001", "synth_0002"]
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].frames, a[1].frames)


def test_labels_masks_round_trip():
    clip = make_clip(2, **SMALL)
    labels = masks_to_labels(clip.masks)
    assert labels.shape == (8, 64, 96) and labels.max() <= clip.num_objects
    assert np.array_equal(labels_to_masks(labels, clip.num_objects), clip.masks)


def test_bad_arguments_name_the_fix():
    with pytest.raises(EdgevisError, match=rf"num_classes must be in 1..{len(CATEGORIES)}.*got 9"):
        make_clip(0, num_classes=9)
    with pytest.raises(EdgevisError, match=r"masks must be a \(T, N, H, W\) bool array"):
        SyntheticClip(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 1, 4, 4), np.uint8), [1], [1], "x")
    with pytest.raises(EdgevisError, match="expected 1 track_ids and classes"):
        SyntheticClip(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 1, 4, 4), bool), [1, 2], [1], "x")
