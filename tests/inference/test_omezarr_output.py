"""OME-Zarr out (and in): the mask writer's multiscale pyramid and NGFF metadata read back with the ome-zarr
library (napari's reader), bounded memory, nothing left on abort; objects' labels and density map as OME-Zarr;
predict_large from an OME-Zarr input written by ome-zarr itself, and to an ``.ome.zarr`` output."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import block_reduce

pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

from model_factory import make_model_folder  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402
from test_objects import BLOCK, SHAPE, _mask, _reference  # noqa: E402

from nnunetv2_selma.inference.objects import measure_objects  # noqa: E402
from nnunetv2_selma.inference.whole_volume import predict_large  # noqa: E402
from nnunetv2_selma.volumes import create_mask_writer, open_volume  # noqa: E402
from nnunetv2_selma.volumes import writers as writers_module  # noqa: E402
from nnunetv2_selma.volumes.writers import check_output_path, pyramid_shapes  # noqa: E402

GEOMETRY = {"spacing": (0.5, 1.0, 2.0), "origin": (10.0, 20.0, 30.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}


def _read_ome_zarr(path: Path):
    """The image node napari's OME-Zarr plugin would make: (node, levels as numpy, multiscales metadata)."""
    nodes = list(Reader(parse_url(str(path)))())
    assert nodes, f"ome-zarr does not recognise {path}"
    node = nodes[0]
    assert node.load(Multiscales) is not None
    levels = [np.asarray(level) for level in node.data]
    attrs = json.loads((path / ".zattrs").read_text())
    return node, levels, attrs["multiscales"][0]


def _max_pyramid(data: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """The expected levels, computed apart from the writer (scikit-image's block_reduce, 0-padded)."""
    levels = [data]
    for _ in range(n_levels - 1):
        levels.append(block_reduce(levels[-1], (2, 2, 2), np.max, cval=0))
    return levels


def _labels(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, dtype)
    blobs = rng.random(shape) > 0.97
    data[blobs] = rng.integers(1, 5000 if dtype == np.uint32 else 3, int(blobs.sum()))
    data[:, :40, :40] = 0  # whole empty chunks (not stored)
    return data


def _write_in_blocks(writer, data: np.ndarray, block=(25, 100, 120)) -> None:
    """Regions that do not line up with the chunks, in predict_large's order."""
    for z in range(0, data.shape[0], block[0]):
        for y in range(0, data.shape[1], block[1]):
            for x in range(0, data.shape[2], block[2]):
                region = (slice(z, z + block[0]), slice(y, y + block[1]), slice(x, x + block[2]))
                writer.write_region(tuple(slice(s.start, min(s.stop, n)) for s, n in zip(region, data.shape)),
                                    data[region])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32])
def test_writer_pyramid_and_metadata_read_back_with_ome_zarr(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(writers_module, "OME_ZARR_CHUNKS", (8, 32, 32))  # many chunks on a small volume
    data = _labels((45, 150, 130), dtype)
    out = tmp_path / "mask.ome.zarr"
    (tmp_path / "work").mkdir()
    writer = create_mask_writer(out, tmp_path / "work" / "output", data.shape, GEOMETRY, dtype=dtype)
    assert not writer.sequential
    _write_in_blocks(writer, data)
    assert not out.exists(), "nothing at the final path before commit"
    assert writer.commit() == out
    assert not any((tmp_path / "work").iterdir()), "the temporary output was moved, not copied"

    node, levels, meta = _read_ome_zarr(out)
    shapes = pyramid_shapes(data.shape)
    assert shapes == [(45, 150, 130), (23, 75, 65), (12, 38, 33), (6, 19, 17)]
    assert [lv.shape for lv in levels] == shapes and all(lv.dtype == dtype for lv in levels)
    for got, expected in zip(levels, _max_pyramid(data, len(shapes))):
        np.testing.assert_array_equal(got, expected)
    assert set(np.unique(levels[2])) <= set(np.unique(data)), "coarse levels only hold ids of the data"
    # NGFF 0.4 metadata: axes z, y, x in micrometres; per level spacing (z, y, x) * 2^k and a half-cell shift
    assert meta["version"] == "0.4" and meta["name"] == "mask"
    assert meta["axes"] == [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    for k, dataset in enumerate(meta["datasets"]):
        scale, translation = dataset["coordinateTransformations"]
        assert dataset["path"] == str(k)
        assert scale == {"type": "scale", "scale": [2.0 * 2**k, 1.0 * 2**k, 0.5 * 2**k]}
        expected = [o + s * (2**k - 1) / 2 for o, s in zip((30.0, 20.0, 10.0), (2.0, 1.0, 0.5))]
        assert translation == {"type": "translation", "translation": expected}
    assert node.metadata["axes"] == meta["axes"]
    assert node.load(Label) is not None, "a mask is an image-label: napari opens a Labels layer"
    # our own reader takes it as input (level 0)
    source = open_volume(out)
    assert source.shape == data.shape and source.dtype == dtype
    assert source.geometry["spacing"] == GEOMETRY["spacing"] and source.geometry["origin"] == GEOMETRY["origin"]
    np.testing.assert_array_equal(source.read((slice(5, 40), slice(30, 140), slice(0, 130))), data[5:40, 30:140])
    assert not (out / "0" / "0" / "0" / "0").exists(), "all-zero chunks are not stored"


def test_pyramid_is_built_in_bounded_memory(tmp_path, monkeypatch):
    """commit() reads level 0 a few chunks at a time: its peak allocation is far below the volume."""
    monkeypatch.setattr(writers_module, "OME_ZARR_CHUNKS", (8, 32, 32))
    data = _labels((64, 256, 256), np.uint8, seed=1)  # 4 MiB; 8 chunks of a level are 64 KiB
    writer = create_mask_writer(tmp_path / "big.ome.zarr", tmp_path / "tmp", data.shape, None)
    _write_in_blocks(writer, data, block=(16, 256, 256))
    tracemalloc.start()
    try:
        writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < data.nbytes / 8, f"pyramid peak {peak} bytes for a {data.nbytes}-byte volume"
    _, levels, meta = _read_ome_zarr(tmp_path / "big.ome.zarr")
    np.testing.assert_array_equal(levels[0], data)
    np.testing.assert_array_equal(levels[-1], _max_pyramid(data, len(levels))[-1])
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]  # no geometry: voxels


def test_abort_leaves_nothing_and_a_stale_temporary_is_replaced(tmp_path):
    out, tmp = tmp_path / "mask.ome.zarr", tmp_path / "tmp"
    stale = tmp_path / "tmp.ome.zarr"
    stale.mkdir()
    (stale / "junk").write_text("from a killed run")
    writer = create_mask_writer(out, tmp, (10, 20, 30), None)
    assert not (stale / "junk").exists()
    writer.write_region((slice(0, 10), slice(0, 20), slice(0, 30)), np.ones((10, 20, 30), np.uint8))
    writer.abort()
    assert not out.exists() and not stale.exists()
    assert list(tmp_path.iterdir()) == []


def test_output_kinds_and_missing_packages(tmp_path, monkeypatch):
    assert check_output_path(tmp_path / "a.ome.zarr") == "zarr"
    assert check_output_path(tmp_path / "a.zarr") == "zarr"
    with pytest.raises(ValueError, match=r"cannot write labels of kind '\.png'.*OME-Zarr \(\.ome\.zarr\)"):
        check_output_path(tmp_path / "a.png", "labels")
    monkeypatch.setitem(sys.modules, "ome_zarr.format", None)  # as if ome-zarr were not installed
    with pytest.raises(ValueError, match=r"needs the 'zarr' and 'ome-zarr' packages.*nnunetv2-selma\[zarr\]"):
        create_mask_writer(tmp_path / "a.ome.zarr", tmp_path / "t", (2, 2, 2))
    assert list(tmp_path.iterdir()) == []


def test_ome_zarr_written_by_ome_zarr_is_read_as_input(tmp_path):
    """OME-Zarr input as other tools write it: ome-zarr's own writer, NGFF 0.5 (zarr v3) and 0.4 (zarr v2)."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    data = np.random.default_rng(2).integers(0, 4000, (12, 40, 36)).astype(np.uint16)
    for fmt in (FormatV05(), FormatV04()):
        path = tmp_path / f"in_{fmt.version}.ome.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
        write_image(data, group, axes="zyx", fmt=fmt, scale_factors=(2,), storage_options={"chunks": (5, 16, 16)})
        source = open_volume(path)
        assert source.kind == "zarr" and source.shape == data.shape and source.dtype == data.dtype
        np.testing.assert_array_equal(source.read_planes(0, 12), data)
        np.testing.assert_array_equal(source.read((slice(3, 11), slice(7, 40), slice(5, 20))), data[3:11, 7:, 5:20])


def test_objects_labels_and_density_as_ome_zarr(tmp_path):
    """--labels OUT.ome.zarr: ids of scipy.ndimage.label on the whole mask (27 blocks), a pyramid napari opens as
    labels; the density map follows as density.ome.zarr, scaled to overlay the mask."""
    mask = _mask()
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, mask)
    out, labels = tmp_path / "objects", tmp_path / "labels.ome.zarr"
    measure_objects(path, out, block_size=BLOCK, connectivity=26, labels=labels, progress=False)
    ref = _reference(mask, [], 26)

    node, levels, meta = _read_ome_zarr(labels)
    assert levels[0].dtype == np.uint32
    np.testing.assert_array_equal(levels[0], ref["labels"])
    assert [lv.shape for lv in levels] == pyramid_shapes(SHAPE)
    for got, expected in zip(levels, _max_pyramid(ref["labels"].astype(np.uint32), len(levels))):
        np.testing.assert_array_equal(got, expected)
    assert node.load(Label) is not None

    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["density"] == "density.ome.zarr" and not (out / "density.tif").exists()
    assert summary["settings"]["density_format"] == "ome-zarr"
    density_node, density, density_meta = _read_ome_zarr(out / "density.ome.zarr")
    centroids = np.stack([ref["rows"][f"centroid_{a}"] for a in "zyx"], axis=1)
    from nnunetv2_selma.inference.objects import density_map

    np.testing.assert_array_equal(density[0], density_map(centroids, SHAPE, 25))
    assert int(density[0].sum()) == ref["n"]
    scale, translation = density_meta["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == [25.0] * 3 and translation["translation"] == [12.0] * 3  # centre of a 25^3 cell
    assert density_node.load(Label) is None, "counts are an image, not labels"


def test_objects_cli_density_format(tmp_path):
    from nnunetv2_selma.cli.objects import main

    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, _mask())
    assert main(["-i", str(path), "-o", str(tmp_path / "a"), "--density-format", "ome-zarr", "--quiet"]) == 0
    assert (tmp_path / "a" / "density.ome.zarr").is_dir() and not (tmp_path / "a" / "density.tif").exists()
    assert main(["-i", str(path), "-o", str(tmp_path / "b"), "--labels", str(tmp_path / "b.ome.zarr"),
                 "--density-format", "tif", "--quiet"]) == 0
    assert (tmp_path / "b" / "density.tif").is_file() and (tmp_path / "b.ome.zarr" / ".zattrs").is_file()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model, a volume that needs 2 x 2 x 2 blocks, and predict_large's mask of it from a 3D TIFF."""
    root = tmp_path_factory.mktemp("omezarr_predict")
    model = make_model_folder(Path(os.environ["nnUNet_results"]), "Dataset579_SELMAomezarr", patch_size=(16, 32, 32))
    rng = np.random.default_rng(7)
    volume = (rng.gamma(2.0, 40.0, size=(24, 64, 64)) + 1).astype(np.uint16)
    tifffile.imwrite(root / "input.tif", volume)
    reference = predict_large(root / "input.tif", root / "ref.b2nd", model, block_size=(16, 32, 32), progress=False,
                              tissue_mask="none")
    mask = open_volume(reference).read((slice(0, 24), slice(0, 64), slice(0, 64)))
    assert 0 < mask.mean() < 1, "the test model should predict both labels"
    return {"root": root, "model": model, "volume": volume, "mask": mask}


def test_predict_large_reads_ome_zarr_input(tiny):
    """The same mask from an OME-Zarr input (NGFF 0.5, written by ome-zarr) as from the 3D TIFF."""
    import zarr
    from ome_zarr.writer import write_image

    path = tiny["root"] / "input.ome.zarr"
    write_image(tiny["volume"], zarr.open_group(str(path), mode="w"), axes="zyx",
                storage_options={"chunks": (8, 32, 32)})
    out = predict_large(path, tiny["root"] / "from_zarr.b2nd", tiny["model"], block_size=(16, 32, 32),
                        progress=False, tissue_mask="none")
    np.testing.assert_array_equal(open_volume(out).read((slice(0, 24), slice(0, 64), slice(0, 64))), tiny["mask"])


def test_predict_large_says_how_many_channels_an_ome_zarr_holds_and_how_to_give_them(tmp_path, capsys):
    """A (c=2, z, y, x) OME-Zarr was 'found an array of shape (2, ...)': neither how many channels nor how
    nnUNetv2_selma_predict_large takes them (one -i per channel; it has no option to pick one)."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    from nnunetv2_selma.cli.predict_large import main

    path = tmp_path / "two_channels.ome.zarr"
    data = np.random.default_rng(2).integers(0, 4000, (2, 12, 40, 36)).astype(np.uint16)
    write_image(data, zarr.open_group(str(path), mode="w", zarr_format=2), axes="czyx", fmt=FormatV04(),
                scale_factors=(2,), storage_options={"chunks": (1, 6, 20, 18)})
    model = make_model_folder(tmp_path / "results", "Dataset574_SELMAchannels", patch_size=(16, 32, 32))
    out = tmp_path / "mask.tif"
    assert main(["-i", str(path), "-o", str(out), "-m", str(model), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: holds 2 channels (an array of shape (2, 12, 40, 36), axes c z y x); "
                          f"expected one channel"), err
    assert "one per channel in the model's channel order" in err and "-i C0.ome.zarr C1.ome.zarr" in err, err
    assert "there is no option to pick one channel" in err and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob("mask.tif*"))


def test_predict_large_writes_ome_zarr(tiny):
    out = predict_large(tiny["root"] / "input.tif", tiny["root"] / "pred.ome.zarr", tiny["model"],
                        block_size=(16, 32, 32), progress=False, tissue_mask="none")
    node, levels, meta = _read_ome_zarr(out)
    np.testing.assert_array_equal(levels[0], tiny["mask"])
    for got, expected in zip(levels, _max_pyramid(tiny["mask"], len(levels))):
        np.testing.assert_array_equal(got, expected)
    assert [lv.shape for lv in levels] == pyramid_shapes((24, 64, 64)) and node.load(Label) is not None
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    assert not (tiny["root"] / "pred.ome.zarr.partial").exists()
