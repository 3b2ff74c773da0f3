"""The ground-floor volume layer: one reader interface for every kind, writers, exact moments, tissue mask."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from nnunetv2_selma.volumes import ExactHistogram, create_mask_writer, open_volume
from nnunetv2_selma.volumes.images import write_image
from nnunetv2_selma.volumes.tissue import low_resolution_tissue_mask


def _volume(shape=(12, 20, 18), dtype=np.uint16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3000, shape).astype(dtype)


def write_ome_zarr(path, data: np.ndarray, chunks=(4, 8, 8)) -> None:
    """A minimal OME-Zarr: a group whose first multiscale level ``0`` is ``(c=1, z, y, x)``."""
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(path), mode="w")
    array = group.create_array("0", shape=(1, *data.shape), dtype=data.dtype, chunks=(1, *chunks))
    array[:] = data[None]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "czyx"],
                                   "datasets": [{"path": "0"}]}]


def _write_every_kind(tmp_path, data: np.ndarray) -> dict:
    import blosc2

    paths = {}
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(data.shape[0]):
        tifffile.imwrite(folder / f"s_{z:03d}.tif", data[z], compression="zlib" if z % 2 else None)
    paths["slices"] = folder
    paths["tif"] = tmp_path / "v.tif"
    tifffile.imwrite(paths["tif"], data)
    paths["tif_compressed"] = tmp_path / "vc.tif"
    tifffile.imwrite(paths["tif_compressed"], data, compression="zlib")
    paths["nii"] = tmp_path / "v.nii.gz"
    write_image(paths["nii"], data)
    paths["mha"] = tmp_path / "v.mha"
    write_image(paths["mha"], data)
    paths["b2nd"] = tmp_path / "v.b2nd"
    blosc2.asarray(data, urlpath=str(paths["b2nd"]), mode="w", chunks=(4, 8, 8), blocks=(2, 4, 4))
    try:
        import zarr  # noqa: F401
    except ImportError:
        return paths
    paths["zarr"] = tmp_path / "v.ome.zarr"
    write_ome_zarr(paths["zarr"], data)
    return paths


def test_every_kind_reads_regions_and_plane_ranges_alike(tmp_path):
    data = _volume()
    for kind, path in _write_every_kind(tmp_path, data).items():
        v = open_volume(path)
        assert v.shape == data.shape and v.dtype == data.dtype, kind
        region = (slice(2, 9), slice(3, 17), slice(1, 12))
        np.testing.assert_array_equal(v.read(region), data[region], err_msg=kind)
        np.testing.assert_array_equal(v.read_planes(3, 8), data[3:8], err_msg=kind)
        buffer = np.full((6, *data.shape[1:]), 7, data.dtype)
        got = v.read_planes(10, 12, out=buffer)  # the last, shorter slab into a reused buffer
        assert np.shares_memory(got, buffer) and got.shape == (2, *data.shape[1:])
        np.testing.assert_array_equal(got, data[10:12], err_msg=kind)
        assert str(path) in v.where(4)


def test_slice_folder_names_the_bad_slice_and_non_3d_images_are_refused(tmp_path):
    data = _volume((5, 8, 8))
    for z in range(5):
        tifffile.imwrite(tmp_path / f"s_{z}.tif", data[z] if z != 3 else data[z, :, :7])
    v = open_volume(tmp_path)
    assert v.where(3).endswith("s_3.tif")
    with pytest.raises(ValueError, match=r"s_3\.tif.*\(8, 7\)"):
        v.read_planes(0, 5)
    write_image(tmp_path / "flat.nii.gz", data[0])
    with pytest.raises(ValueError, match="expected a 3D image"):
        open_volume(tmp_path / "flat.nii.gz")
    with pytest.raises(FileNotFoundError, match="input volume not found"):
        open_volume(tmp_path / "missing.b2nd")


def test_writers_round_trip_through_the_readers(tmp_path):
    data = (_volume((6, 10, 12)) % 7).astype(np.uint8)
    for name in ("out_slices", "out.tif", "out.b2nd", "out.nii.gz"):
        writer = create_mask_writer(tmp_path / name, tmp_path / f"tmp_{name.split('.')[0]}", data.shape)
        for z in range(data.shape[0]):
            if writer.sequential:
                writer.write_plane(z, data[z])
            else:
                writer.write_region((slice(z, z + 1), slice(0, 10), slice(0, 12)), data[z : z + 1])
        np.testing.assert_array_equal(open_volume(writer.commit()).read_planes(0, 6), data, err_msg=name)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int8])
def test_exact_histogram_equals_numpy(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    values = rng.integers(info.min, int(info.max) + 1, 5000).astype(dtype)
    values[:300] = 0
    h = ExactHistogram(dtype)
    counts = h.update(values[:2000])
    assert counts[0] == np.count_nonzero(values[:2000] == 0)
    h.update(values[2000:].reshape(50, 60))
    ref = values.astype(np.float64)
    mean, std = h.moments()
    assert mean == pytest.approx(ref.mean(), rel=1e-12) and std == pytest.approx(ref.std(), rel=1e-12)
    assert h.min_max() == (int(values.min()), int(values.max()))
    qs = [0.5, 1, 25, 50, 99.5]
    assert h.percentiles(qs) == list(np.percentile(values, qs, method="inverted_cdf").astype(float))
    kept = ref[300:]  # removing counted zeros: the moments of the rest
    assert h.moments(zeros_to_remove=300) == pytest.approx((kept.mean(), kept.std()), rel=1e-12)
    with pytest.raises(ValueError, match="float32"):
        ExactHistogram(np.float32)


def test_tissue_mask_is_the_same_from_every_kind(tmp_path):
    """A bright box in a dark volume: the mask covers the box, and no reader changes it."""
    data = _volume((40, 48, 40), seed=3) // 100
    data[10:30, 12:36, 8:32] += 1000
    masks = [low_resolution_tissue_mask(open_volume(p)) for p in _write_every_kind(tmp_path, data).values()]
    mask, factors, threshold = masks[0]
    assert factors == (8, 8, 8) and mask.shape == (5, 6, 5)
    assert mask[1:4, 2:4, 1:4].all() and mask.mean() < 0.5 and 0 < threshold.value < 1000
    for other, f, t in masks[1:]:
        np.testing.assert_array_equal(other, mask)
        assert (f, t) == (factors, threshold)


def test_tissue_mask_of_a_volume_that_is_tissue_everywhere_is_all_tissue(tmp_path):
    """A crop inside the brain (tissue ~400 everywhere, 16 bright spheres): no dark outside, so ingest's mask
    (what pretraining samples from) and its statistics cover all of it, and the reason is recorded."""
    from test_tissue_mask import _tissue_everywhere

    from nnunetv2_selma.volumes.tissue import TissueStats

    volume, _ = _tissue_everywhere()
    tifffile.imwrite(tmp_path / "inside.tif", volume)
    mask, factors, threshold = low_resolution_tissue_mask(open_volume(tmp_path / "inside.tif"))
    assert mask.all() and threshold.value is None and not threshold.removes
    assert threshold.reason.startswith("no clear outside") and threshold.info()["value"] is None
    stats = TissueStats(volume.shape, volume.dtype, factors, threshold)
    stats.update(volume, 0)
    assert stats.stats()["tissue_fraction"] == 1.0 and stats.stats()["tissue_rule"]["value"] is None
