"""The pretraining store (``store/``): ingest (discovery, bad input, resume), the format's checks and the reader API."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import blosc2
import numpy as np
import pytest
import tifffile

from nnunetv2_selma.cli.ingest import main as ingest_main
from nnunetv2_selma.normalization import normalize_image
from nnunetv2_selma.store.format import MANIFEST_NAME, load_manifest, verify_volume
from nnunetv2_selma.store.ingest import DEFAULT_CHUNKS, find_volume_sources, ingest_store
from nnunetv2_selma.store.reader import PretrainingStore
from nnunetv2_selma.volumes.images import write_image


def _tissue_volume(shape, dtype=np.uint16, seed=0, offset=0) -> np.ndarray:
    """Dark noisy background with a bright box of 'tissue' in the middle."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 40, shape).astype(np.int64) + offset
    z, y, x = shape
    vol[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] += 1000 + rng.integers(0, 400, (
        3 * z // 4 - z // 4, 3 * y // 4 - y // 4, 3 * x // 4 - x // 4))
    return vol.astype(dtype)


def _write_slices(folder: Path, vol: np.ndarray, names=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(vol.shape[0]):
        # unpadded numbers: string order (1, 10, 11, 2...) differs from z order
        tifffile.imwrite(folder / (names(z) if names else f"img_{z + 1}.tif"), vol[z])


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    """A small download: vessel sample with two channels (slices), a cfos sample as slices, and
    single 3D files of each accepted kind."""
    root = tmp_path_factory.mktemp("download")
    vols = {
        "vessel/s1/C00": _tissue_volume((40, 48, 56), seed=1),
        "vessel/s1/C01": _tissue_volume((40, 48, 56), seed=2),
        "cfos/brain7/C00": _tissue_volume((70, 40, 44), seed=3),  # two slabs of 64
        "nucleus/fileA/C00": _tissue_volume((20, 24, 28), seed=4),
        "nucleus/fileB/C00": _tissue_volume((20, 24, 28), seed=5),
        "nucleus/fileC/C00": _tissue_volume((20, 24, 28), seed=6),
        "ab_plaque/p1/stack": _tissue_volume((20, 24, 28), seed=7),
    }
    _write_slices(root / "unannotated_vessel/s1/C00", vols["vessel/s1/C00"])
    _write_slices(root / "unannotated_vessel/s1/C01", vols["vessel/s1/C01"])
    _write_slices(root / "nested/unannotated_cfos/brain7/C00", vols["cfos/brain7/C00"],
                  names=lambda z: f"C00_Z{z:d}.tiff")
    (root / "unannotated_nucleus").mkdir()
    write_image(root / "unannotated_nucleus/fileA.nii.gz", vols["nucleus/fileA/C00"])
    write_image(root / "unannotated_nucleus/fileB.mha", vols["nucleus/fileB/C00"])
    blosc2.asarray(vols["nucleus/fileC/C00"], urlpath=str(root / "unannotated_nucleus/fileC.b2nd"), mode="w")
    (root / "unannotated_ab_plaque/p1").mkdir(parents=True)
    tifffile.imwrite(root / "unannotated_ab_plaque/p1/stack.tif", vols["ab_plaque/p1/stack"])
    return root, vols


@pytest.fixture(scope="module")
def store(download, tmp_path_factory):
    root, vols = download
    path = tmp_path_factory.mktemp("store")
    report = ingest_store(root, path, num_processes=2, progress=False)
    assert report.ok, report.failed
    return path


def test_discovery_finds_series_and_3d_files(download):
    root, vols = download
    names = [s.name for s in find_volume_sources(root)]
    assert names == sorted(vols)


def test_store_content_equals_source_in_numeric_slice_order(download, store):
    _, vols = download
    s = PretrainingStore(store)
    assert sorted(v.name for v in s.volumes) == sorted(vols)
    for v in s.volumes:
        ref = vols[v.name]
        assert v.shape == ref.shape and v.dtype == ref.dtype
        np.testing.assert_array_equal(s.read_patch(v.name, (0, 0, 0), ref.shape), ref)
        assert (store / "volumes" / f"{v.name}_tissue.npy").is_file()
    manifest = load_manifest(store)
    assert manifest["version"] == 1 and manifest["failed"] == []
    assert (store / "ingest.log").read_text().count("wrote ") == len(vols)


def test_stats_are_over_tissue(download, store):
    _, vols = download
    s = PretrainingStore(store)
    v = s.volume("cfos/brain7/C00")
    ref = vols["cfos/brain7/C00"]
    mask = s.tissue_mask(v.name)
    f = load_manifest(store)["volumes"][v.name]["mask_factors"]
    full = np.kron(mask, np.ones(f, bool))[: ref.shape[0], : ref.shape[1], : ref.shape[2]]
    assert full[ref > 500].mean() > 0.6  # bright voxels lie in tissue blocks (8^3 edge blocks may miss)
    assert 0.1 < full.mean() < 0.8  # ... and the black outside is mostly not tissue
    tissue = ref[full].astype(np.float64)
    # statistics come from every 4th voxel per axis of the tissue blocks: close to, not equal to,
    # the exact ones (on this tiny volume with a sharp box edge the sub-grid is coarse)
    assert abs(v.stats["mean"] - tissue.mean()) < 0.1 * tissue.mean()
    assert abs(v.stats["std"] - tissue.std()) < 0.15 * tissue.std()
    assert abs(v.stats["p99_5"] - np.percentile(tissue, 99.5)) < 50
    assert v.stats["mean"] > 2 * ref.mean()  # the dark outside would drag it down


def test_read_patch_zero_pads_and_small_volumes(download, store):
    _, vols = download
    s = PretrainingStore(store)
    ref = vols["nucleus/fileA/C00"]
    p = s.read_patch("nucleus/fileA/C00", (-3, 10, 20), (8, 32, 16))
    assert p.shape == (8, 32, 16) and p.dtype == np.uint16
    np.testing.assert_array_equal(p[3:, :14, :8], ref[0:5, 10:24, 20:28])
    assert not p[:3].any() and not p[:, 14:].any() and not p[:, :, 8:].any()
    big = s.read_patch("nucleus/fileA/C00", (0, 0, 0), (32, 32, 32))  # larger than the volume
    np.testing.assert_array_equal(big[:20, :24, :28], ref)
    assert not s.read_patch("nucleus/fileA/C00", (100, 0, 0), (4, 4, 4)).any()
    with pytest.raises(KeyError, match="vessel/s1/C00"):
        s.read_patch("nope", (0, 0, 0), (4, 4, 4))


def test_sample_patch_lands_in_tissue_and_is_reproducible(download, store):
    _, vols = download
    s = PretrainingStore(store)
    centres_in_tissue = []
    for i in range(40):
        patch, name, start = s.sample_patch((8, 8, 8), np.random.default_rng(i))
        np.testing.assert_array_equal(patch, vols[name][tuple(slice(a, a + 8) for a in start)])
        centres_in_tissue.append(patch[4, 4, 4] > 500)
    # the bright box is 1/8 of each volume: uniform sampling would hit it ~12% of the time
    assert np.mean(centres_in_tissue) > 0.5  # (8^3 mask blocks on these tiny volumes blur the edges)
    a = s.sample_patch((8, 8, 8), np.random.default_rng(5), structures=["vessel"])
    b = s.sample_patch((8, 8, 8), np.random.default_rng(5), structures=["vessel"])
    assert a[1] == b[1] and a[2] == b[2] and a[1].startswith("vessel/")
    patch, name, start = s.sample_patch((64, 64, 64), np.random.default_rng(0), structures="nucleus")
    assert patch.shape == (64, 64, 64) and start == (0, 0, 0)  # smaller volume: zero-padded
    with pytest.raises(ValueError, match="no volume of structure"):
        s.sample_patch((8, 8, 8), np.random.default_rng(0), structures=["microglia"])
    # the first draw of a fresh reader loads the drawn volume's tissue mask only (weights from the manifest),
    # and draws what a reader that loaded every mask draws
    lazy = PretrainingStore(store)
    first = lazy.sample_patch((8, 8, 8), np.random.default_rng(3))
    assert list(lazy._tissue) == [first[1]]
    for entry in s._entries.values():
        assert entry["tissue_blocks"] == s._tissue_index(entry["name"]).size
    eager = PretrainingStore(store)
    eager._entries = {k: {f: v for f, v in e.items() if f != "tissue_blocks"} for k, e in eager._entries.items()}
    again = eager.sample_patch((8, 8, 8), np.random.default_rng(3))
    assert again[1:] == first[1:] and len(eager._tissue) == len(eager._entries)


def test_pickle_is_cheap_and_works(store):
    s = PretrainingStore(store)
    s.read_patch(s.volumes[0].name, (0, 0, 0), (4, 4, 4))  # opens a handle
    blob = pickle.dumps(s)
    assert len(blob) < 100_000
    s2 = pickle.loads(blob)
    assert s2._arrays == {} and s2.fingerprint == s.fingerprint
    np.testing.assert_array_equal(s2.read_patch(s.volumes[0].name, (1, 2, 3), (5, 6, 7)),
                                  s.read_patch(s.volumes[0].name, (1, 2, 3), (5, 6, 7)))


def test_store_patch_and_case_normalise_as_nnunet(download, store):
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    _, vols = download
    s = PretrainingStore(store)
    case = vols["vessel/s1/C00"][5:37, 8:40, 10:42]
    nnunet = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}, target_dtype=np.float32).run(
        case.copy(), None)
    ours = normalize_image(case)
    store_patch = normalize_image(s.read_patch("vessel/s1/C00", (5, 8, 10), (32, 32, 32)))
    np.testing.assert_array_equal(ours, nnunet)
    np.testing.assert_array_equal(store_patch, nnunet)
    assert store_patch.dtype == np.float32 and abs(float(store_patch.std()) - 1) < 1e-3


def test_fingerprint_stable_and_content_keyed(store, tmp_path):
    fp = PretrainingStore(store).fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    assert PretrainingStore(copy).fingerprint == fp  # location-independent
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    first = next(iter(manifest["volumes"]))
    manifest["volumes"][first]["crc32"] += 1
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert PretrainingStore(copy).fingerprint != fp


def test_missing_or_wrong_version_manifest(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="nnUNetv2_selma_ingest"):
        PretrainingStore(tmp_path)
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    manifest["version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version 99"):
        PretrainingStore(tmp_path)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_reported_and_do_not_stop_the_others(tmp_path, capsys):
    root = tmp_path / "dl" / "unannotated_cfos"
    good = _tissue_volume((10, 16, 16), seed=1)
    _write_slices(root / "good/C00", good)
    _write_slices(root / "size/C00", good)
    tifffile.imwrite(root / "size/C00/img_5.tif", np.zeros((16, 17), np.uint16))
    _write_slices(root / "dtype/C00", good)
    tifffile.imwrite(root / "dtype/C00/img_7.tif", np.zeros((16, 16), np.uint8))
    _write_slices(root / "gap/C00", good)
    (root / "gap/C00/img_4.tif").unlink()
    _write_slices(root / "unreadable/C00", good)
    (root / "unreadable/C00/img_3.tif").write_bytes(b"this is not a tiff")
    (root / "empty/C00").mkdir(parents=True)
    nan = _tissue_volume((10, 16, 16), seed=2).astype(np.float32)
    nan[6, 3, 3] = np.nan
    _write_slices(root / "nan/C00", nan)
    neg = (_tissue_volume((10, 16, 16), seed=3).astype(np.int32) - 600).astype(np.int16)
    _write_slices(root / "negative/C00", neg)

    rc = ingest_main(["-i", str(tmp_path / "dl"), "-o", str(tmp_path / "store"), "-np", "1"])
    assert rc == 1
    err = capsys.readouterr().err
    reasons = {f["name"]: f["reason"] for f in load_manifest(tmp_path / "store")["failed"]}
    assert set(reasons) == {f"cfos/{s}/C00" for s in ("size", "dtype", "gap", "unreadable", "empty", "nan")}
    assert "img_5.tif" in reasons["cfos/size/C00"] and "(16, 17)" in reasons["cfos/size/C00"]
    assert "img_7.tif" in reasons["cfos/dtype/C00"] and "uint8" in reasons["cfos/dtype/C00"]
    assert "gap" in reasons["cfos/gap/C00"] and "img_3.tif" in reasons["cfos/gap/C00"]
    assert "img_3.tif" in reasons["cfos/unreadable/C00"] and "unreadable" in reasons["cfos/unreadable/C00"]
    assert "empty/C00" in reasons["cfos/empty/C00"] and "no .tif" in reasons["cfos/empty/C00"]
    assert "img_7.tif" in reasons["cfos/nan/C00"] and "NaN" in reasons["cfos/nan/C00"]
    assert "cfos/gap/C00" in err
    s = PretrainingStore(tmp_path / "store")
    assert sorted(v.name for v in s.volumes) == ["cfos/good/C00", "cfos/negative/C00"]
    stored = s.read_patch("cfos/negative/C00", (0, 0, 0), neg.shape)
    assert stored.dtype == np.int16 and stored.min() < 0
    np.testing.assert_array_equal(stored, neg)  # negatives kept, not wrapped
    stats = s.volume("cfos/negative/C00").stats
    # wrapped to uint16, -600 would read 64936
    assert -650 < stats["min"] < 0 < stats["max"] < 2000 and stats["p00_5"] < 0 < stats["p99_5"]


def test_store_inside_input_or_input_inside_store_is_refused_before_anything_is_created(tmp_path):
    dl = tmp_path / "dl"
    _write_slices(dl / "unannotated_cfos/s1/C00", _tissue_volume((4, 8, 8)))
    for store, message in ((dl / "store", "inside the input folder"),
                           (dl / "unannotated_cfos" / "s1" / "store", "inside the input folder"),
                           (dl, "inside the input folder"),
                           (tmp_path, "is inside the store")):
        with pytest.raises(ValueError, match=message):
            ingest_store(dl, store, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl"]
    assert not list(dl.rglob("*.log")) and not list(dl.rglob("manifest.json")) and not (dl / "store").exists()


def test_store_files_are_readable_by_others_under_umask_022(tmp_path):
    _write_slices(tmp_path / "dl/unannotated_cfos/s1/C00", _tissue_volume((4, 8, 8)))
    old = os.umask(0o022)
    try:
        assert ingest_store(tmp_path / "dl", tmp_path / "store", progress=False).ok
    finally:
        os.umask(old)
    for path in [tmp_path / "store" / MANIFEST_NAME, *(tmp_path / "store" / "volumes").rglob("*.*")]:
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))


def test_missing_input_leaves_no_store_folder(tmp_path):
    with pytest.raises(ValueError, match="input folder does not exist"):
        ingest_store(tmp_path / "nowhere", tmp_path / "store", progress=False)
    with pytest.raises(ValueError, match="no 'unannotated_<structure>' folder"):
        ingest_store(tmp_path, tmp_path.parent / f"{tmp_path.name}_store", progress=False)
    assert not (tmp_path / "store").exists() and not (tmp_path.parent / f"{tmp_path.name}_store").exists()


# ------------------------------------------------------------------------------------------ resume
def test_resume_keeps_verified_and_redoes_broken(download, store, tmp_path):
    root, vols = download
    path = tmp_path / "store"
    shutil.copytree(store, path)
    manifest = load_manifest(path)
    names = sorted(manifest["volumes"])
    corrupt, dropped, intact = names[0], names[1], names[2]
    # a corrupt file listed in the manifest: flip bytes in the middle of the compressed data
    f = path / manifest["volumes"][corrupt]["file"]
    raw = bytearray(f.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)
    f.write_bytes(bytes(raw))
    assert verify_volume(path, manifest["volumes"][corrupt]) is not None
    # a volume written but killed before the manifest was updated, plus a half-written leftover
    del manifest["volumes"][dropped]
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    leftover = path / "volumes" / f"{dropped}.b2nd"
    leftover.with_name(f".{leftover.name}.tmp.b2nd").write_bytes(b"half")  # atomic_path's temporary
    intact_mtime = (path / manifest["volumes"][intact]["file"]).stat().st_mtime_ns

    report = ingest_store(root, path, progress=False)
    assert report.ok
    assert sorted(report.written) == sorted([corrupt, dropped])
    assert set(report.kept) == set(names) - {corrupt, dropped}
    assert (path / manifest["volumes"][intact]["file"]).stat().st_mtime_ns == intact_mtime
    s = PretrainingStore(path)
    for n in (corrupt, dropped):
        np.testing.assert_array_equal(s.read_patch(n, (0, 0, 0), vols[n].shape), vols[n])
    assert s.fingerprint == PretrainingStore(store).fingerprint


def test_kill_mid_ingest_then_rerun_equals_an_uninterrupted_store(tmp_path):
    """SIGKILL while a volume is half written (its temporary file exists and the process is still
    running), then a rerun: the store equals one ingested without interruption."""
    root = tmp_path / "dl" / "unannotated_vessel"
    vols = {f"vessel/s{i}/C00": _tissue_volume((128, 96, 96), seed=10 + i) for i in range(4)}
    for name, vol in vols.items():
        _write_slices(root / name.split("/")[1] / "C00", vol)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "nnunetv2_selma.cli.ingest", "-i", str(tmp_path / "dl"), "-o", str(store)]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(store.glob("volumes/**/.*.tmp.b2nd")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # the first volume is being written and three more wait: the job cannot have finished yet
    assert proc.poll() is None, "ingest finished (or died) before it could be killed mid-volume"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished on its own
    if (store / MANIFEST_NAME).exists():
        listed = load_manifest(store)["volumes"]
        assert len(listed) < len(vols)  # the kill interrupted the job
        for entry in listed.values():  # nothing corrupt is ever listed
            assert verify_volume(store, entry) is None
    assert subprocess.run(cmd, env=os.environ.copy(), capture_output=True).returncode == 0
    assert not [p.name for p in (store / "volumes").rglob("*") if ".tmp" in p.name]
    uninterrupted = tmp_path / "store_uninterrupted"
    assert ingest_store(tmp_path / "dl", uninterrupted, progress=False).ok
    s, ref = PretrainingStore(store), PretrainingStore(uninterrupted)
    assert s.fingerprint == ref.fingerprint  # same arrays (CRC32), statistics, masks' factors
    for name, vol in vols.items():
        np.testing.assert_array_equal(s.read_patch(name, (0, 0, 0), vol.shape), vol)
        np.testing.assert_array_equal(s.tissue_mask(name), ref.tissue_mask(name))


def test_ome_zarr_volumes_are_ingested_and_kept_on_rerun(tmp_path):
    pytest.importorskip("zarr")
    from test_volumes import write_ome_zarr

    root = tmp_path / "dl" / "unannotated_cfos"
    vols = {"cfos/s1/C00": _tissue_volume((70, 40, 44), seed=31), "cfos/s2/C00": _tissue_volume((20, 24, 28), seed=32)}
    (root / "s1").mkdir(parents=True)
    write_ome_zarr(root / "s1" / "C00.ome.zarr", vols["cfos/s1/C00"])  # a channel of a sample folder
    write_ome_zarr(root / "s2.zarr", vols["cfos/s2/C00"])  # a sample, channel C00
    assert [(s.name, s.kind) for s in find_volume_sources(tmp_path / "dl")] == [(n, "file") for n in sorted(vols)]
    report = ingest_store(tmp_path / "dl", tmp_path / "store", progress=False)
    assert report.ok, report.failed
    s = PretrainingStore(tmp_path / "store")
    for name, vol in vols.items():
        np.testing.assert_array_equal(s.read_patch(name, (0, 0, 0), vol.shape), vol)
    again = ingest_store(tmp_path / "dl", tmp_path / "store", progress=False)
    assert sorted(again.kept) == sorted(vols) and not again.written


def test_two_channel_ome_zarr_says_how_ingest_takes_channels(tmp_path):
    zarr = pytest.importorskip("zarr")
    sample = tmp_path / "dl" / "unannotated_vessel" / "s1"
    sample.mkdir(parents=True)
    group = zarr.open_group(str(sample / "both.ome.zarr"), mode="w")
    group.create_array("0", shape=(2, 8, 12, 12), dtype=np.uint16, chunks=(1, 4, 12, 12))[:] = 7
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "czyx"],
                                   "datasets": [{"path": "0"}]}]
    report = ingest_store(tmp_path / "dl", tmp_path / "store", progress=False)
    assert [f["name"] for f in report.failed] == ["vessel/s1/both"]
    reason = report.failed[0]["reason"]
    assert reason.startswith(f"{sample / 'both.ome.zarr'}: holds 2 channels (an array of shape (2, 8, 12, 12), "
                             f"axes c z y x); expected one channel"), reason
    assert "unannotated_vessel/s1/C00.ome.zarr, C01.ome.zarr" in reason and "-i" not in reason, reason


# ------------------------------------------------------------------------------------------ slab pipeline
def test_slab_buffers_are_reused_correctly_and_errors_late_in_a_series_stop_cleanly(tmp_path):
    """Series deeper than two slabs (the two slab buffers are refilled), read by the forked slab
    reader, and a 3D file read in-process: content, CRC32 and statistics match the source; a bad
    slice in the third slab fails that volume with its name, and no reader process is left."""
    import multiprocessing
    import zlib

    root = tmp_path / "dl" / "unannotated_vessel"
    deep = _tissue_volume((150, 24, 20), seed=21)  # slabs 0-63, 64-127, 128-149
    _write_slices(root / "deep/C00", deep)
    _write_slices(root / "late/C00", deep)
    tifffile.imwrite(root / "late/C00/img_140.tif", np.zeros((24, 21), np.uint16))  # slice z=139
    tifffile.imwrite(root / "stack.tif", deep)  # 3D file: slabs read in-process
    report = ingest_store(tmp_path / "dl", tmp_path / "store", chunks=(64, 16, 16), blocks=(16, 8, 8),
                          progress=False)
    assert [f["name"] for f in report.failed] == ["vessel/late/C00"]
    assert "img_140.tif" in report.failed[0]["reason"] and "(24, 21)" in report.failed[0]["reason"]
    assert multiprocessing.active_children() == []
    s = PretrainingStore(tmp_path / "store")
    entries = load_manifest(tmp_path / "store")["volumes"]
    for name in ("vessel/deep/C00", "vessel/stack/C00"):
        ref = deep
        np.testing.assert_array_equal(s.read_patch(name, (0, 0, 0), ref.shape), ref)
        assert entries[name]["crc32"] == zlib.crc32(np.ascontiguousarray(ref))
        assert verify_volume(tmp_path / "store", entries[name]) is None
    # the forked reader and the in-process one gather the same tissue mask and statistics
    assert s.volume("vessel/deep/C00").stats == s.volume("vessel/stack/C00").stats
    np.testing.assert_array_equal(s.tissue_mask("vessel/deep/C00"), s.tissue_mask("vessel/stack/C00"))
    assert not [p.name for p in (tmp_path / "store" / "volumes").rglob("*") if ".tmp" in p.name]
    # inference computes its tissue masks with the store's slab depth, so the two masks agree
    from nnunetv2_selma.volumes.tissue import DEFAULT_CHUNK_Z

    assert DEFAULT_CHUNK_Z == DEFAULT_CHUNKS[0]
