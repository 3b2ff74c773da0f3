"""The downsampled brain and the mapped centroids agree: a bright cube lands where its centroid is mapped."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("brainglobe_space")

from nnunetv2_selma.regions.downsample import (  # noqa: E402
    atlas_axis_of,
    centroids_to_atlas_orientation,
    check_orientation,
    check_voxel_size,
    downsample_volume,
    to_atlas_orientation,
)


class _ArraySource:
    """The part of ``VolumeSource`` that :func:`downsample_volume` uses, over an array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape = array, array.shape

    def read_planes(self, z0: int, z1: int, out=None) -> np.ndarray:
        return self.array[z0:z1]


@pytest.mark.parametrize("orientation", ["asr", "ial", "psl", "rai"])
def test_cube_and_its_centroid_meet_in_atlas_orientation(orientation):
    shape, voxel = (61, 47, 83), (10.0, 12.0, 7.0)
    image = np.zeros(shape, np.float32)
    centre = np.array([23, 30, 51])
    lo = centre - np.array([5, 4, 7])
    image[lo[0]:lo[0] + 11, lo[1]:lo[1] + 9, lo[2]:lo[2] + 15] = 100  # ~110 x 108 x 105 um
    resolution = (50.0, 50.0, 50.0)
    small = downsample_volume(_ArraySource(image), voxel, resolution, slab_planes=4, progress=False)
    assert small.shape == (12, 11, 12)
    asr = to_atlas_orientation(small, orientation)
    point = centroids_to_atlas_orientation(centre[None].astype(float), shape, small.shape, orientation)[0]
    brightest = np.array(np.unravel_index(np.argmax(asr), asr.shape))
    assert np.abs(np.floor(point) - brightest).max() <= 1
    weights = asr / asr.sum()
    centre_of_mass = np.array([(weights.sum(axis=tuple(a for a in range(3) if a != k)) * (np.arange(n) + 0.5)).sum()
                               for k, n in enumerate(asr.shape)])
    assert np.allclose(point, centre_of_mass, atol=0.35)  # in downsampled voxels (50 um)
    assert sorted(atlas_axis_of(orientation)) == [0, 1, 2]


def test_checks_name_the_bad_value():
    assert check_orientation(" PSL ") == "psl"
    for bad in ("ps", "psll", "ppl", "xyz", "asr1"):
        with pytest.raises(ValueError, match=f"orientation {bad!r}"):
            check_orientation(bad)
    assert check_voxel_size(["5", 6, 7.5]) == (5.0, 6.0, 7.5)
    with pytest.raises(ValueError, match="voxel size missing"):
        check_voxel_size(None)
    for bad in ([5, 6], [5, 0, 6], [5, float("nan"), 6], ["a", 1, 2]):
        with pytest.raises(ValueError, match="expected three finite numbers > 0"):
            check_voxel_size(bad)
