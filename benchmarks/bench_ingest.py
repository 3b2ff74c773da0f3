"""Benchmark of the streaming pretraining store. Prints the tables for RESULTS.md.

    .venv/bin/python benchmarks/bench_ingest.py [--depth 512] [--side 1024] [--work /tmp/bench_ingest]

1. Writes a ``side x side x depth`` uint16 slice series (1 GiB by default) with a fast writer of
   its own (tissue ellipse, depth attenuation, stripes, noise): the project's synthetic generator
   draws structures and is much slower at this size; compressibility is what matters here.
2. Chunk/block/codec candidates: write time, size and ms per random 128^3 read for each.
3. Ingest throughput against the bound measured in the same run: one plain loop that reads
   every slice with tifffile and writes it into a blosc2 array with the same chunks, blocks,
   codec and threads (writing one chunk-deep slab at a time, as blosc2 needs full chunks).
   One worker on the whole volume, two workers on the same bytes split into two volumes. The
   ingest runs in a fresh process that has imported blosc2 and tifffile before its clock starts,
   as the bound loop's process has (interpreter start-up and imports are not ingest work).
4. Peak resident memory of the ingest (child process, ``ru_maxrss``) at depth/2 and depth.
5. Random 128^3 reads from the store beside the same reads from nnU-Net's own preprocessed
   ``.b2nd`` (``nnUNetDatasetBlosc2.save_case`` with ``comp_blosc2_params`` for a 128^3 patch,
   float32 data as nnU-Net stores it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PATCH = (128, 128, 128)


def write_series(folder: Path, depth: int, side: int, seed: int = 0) -> None:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    tissue = (((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.33) ** 2) < 1
    texture = 1 + 0.3 * np.sin(40 * yy) * np.cos(33 * xx)
    stripes = 1 - 0.2 * (np.sin(xx * 300) > 0.7)
    base = (tissue * texture * stripes * 1500).astype(np.float32)
    for z in range(depth):
        att = np.exp(-1.5 * z / depth)
        plane = base * att + rng.integers(80, 140, (side, side), dtype=np.uint16)
        tifffile.imwrite(folder / f"slice_{z}.tif", plane.astype(np.uint16))


def bound_loop(folder: Path, out: Path, chunks, blocks, nthreads: int, codec: str | None = None,
               clevel: int | None = None) -> float:
    """Seconds for the plain read-slices-and-compress loop (the throughput bound); the store's
    default codec and level unless given."""
    import blosc2
    import tifffile

    from nnunetv2_selma.store.ingest import DEFAULT_CLEVEL, DEFAULT_CODEC, _cparams
    from nnunetv2_selma.volumes.readers import list_slice_files

    t0 = time.perf_counter()
    files = list_slice_files(folder)
    first = tifffile.imread(files[0])
    shape = (len(files), *first.shape)
    arr = blosc2.empty(shape, dtype=first.dtype, chunks=chunks, blocks=blocks, urlpath=str(out), mode="w",
                       cparams=_cparams(codec or DEFAULT_CODEC, DEFAULT_CLEVEL if clevel is None else clevel,
                                        nthreads))
    slab = np.empty((chunks[0], *first.shape), first.dtype)
    for z0 in range(0, shape[0], chunks[0]):
        z1 = min(z0 + chunks[0], shape[0])
        for i, f in enumerate(files[z0:z1]):
            slab[i] = tifffile.imread(f)
        arr[z0:z1] = slab[: z1 - z0]
    del arr
    return time.perf_counter() - t0


def random_reads(read, shape, n: int, seed: int = 0) -> float:
    """Mean ms per random 128^3 read."""
    rng = np.random.default_rng(seed)
    starts = [tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, PATCH)) for _ in range(n)]
    read(starts[0])  # open handles
    t0 = time.perf_counter()
    for st in starts:
        read(st)
    return (time.perf_counter() - t0) / n * 1000


def child_ingest(download: Path, store: Path, np_: int, chunks, blocks) -> dict:
    code = (
        "import json,resource,time,sys;"
        # imports before the clock, as in the bound loop's process (blosc2 costs 0.2-0.5 s to import)
        "import blosc2,tifffile;"
        "from nnunetv2_selma.store.ingest import ingest_store;"
        "t=time.perf_counter();"
        f"r=ingest_store({str(download)!r},{str(store)!r},num_processes={np_},chunks={tuple(chunks)},"
        f"blocks={tuple(blocks)},progress=False);"
        "dt=time.perf_counter()-t;"
        "print(json.dumps({'seconds':dt,'ok':r.ok,'failed':r.failed,"
        "'rss_self_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,"
        "'rss_children_mb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
    )
    shutil.rmtree(store, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(out.stderr)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["ok"]:
        raise RuntimeError(res["failed"])
    return res


def link_subset(src: Path, dst: Path, z0: int, z1: int) -> None:
    from nnunetv2_selma.volumes.readers import list_slice_files

    dst.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(list_slice_files(src)[z0:z1]):
        os.symlink(f, dst / f"slice_{i}.tif")


def main() -> None:
    import blosc2

    from nnunetv2_selma.normalization import normalize_image
    from nnunetv2_selma.store import PretrainingStore
    from nnunetv2_selma.store.ingest import DEFAULT_BLOCKS, DEFAULT_CHUNKS

    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=512)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--reads", type=int, default=40)
    ap.add_argument("--work", default="/tmp/bench_ingest")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of bound / 1 worker / 2 workers")
    ap.add_argument("--skip-candidates", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    series = work / "series" / "unannotated_vessel" / "s1" / "C00"
    gib = args.depth * args.side * args.side * 2 / 2**30
    if not series.is_dir() or len(list(series.iterdir())) != args.depth:
        shutil.rmtree(work / "series", ignore_errors=True)
        t = time.perf_counter()
        write_series(series, args.depth, args.side)
        print(f"wrote {args.depth} slices of {args.side}^2 uint16 ({gib:.2f} GiB) in {time.perf_counter() - t:.1f} s")
    nthreads = os.cpu_count() or 1
    print(f"machine: {os.cpu_count()} cores, blosc2 {blosc2.__version__}")

    # -- chunk / block candidates -----------------------------------------------------------
    if not args.skip_candidates:
        from nnunetv2_selma.store.ingest import DEFAULT_CLEVEL, DEFAULT_CODEC

        default = (DEFAULT_CODEC, DEFAULT_CLEVEL)
        candidates = [((64, 256, 256), (16, 64, 64), default), ((64, 128, 128), (32, 32, 32), default),
                      ((128, 128, 128), (32, 64, 64), default), ((32, 512, 512), (8, 128, 128), default),
                      ((64, 128, 128), (16, 64, 64), default), ((64, 128, 128), (32, 32, 32), ("LZ4", 5))]
        print("\n| chunks | blocks | codec | write s (bound loop) | MB on disk | ms / random 128^3 read |")
        print("|---|---|---|---|---|---|")
        for chunks, blocks, (codec, clevel) in candidates:
            out = work / "cand.b2nd"
            dt = bound_loop(series, out, chunks, blocks, nthreads, codec, clevel)
            arr = blosc2.open(str(out), mode="r", dparams={"nthreads": 1})
            # decoded as PretrainingStore.read_patch does
            ms = random_reads(lambda st, arr=arr: arr.get_slice_numpy(
                np.empty(PATCH, arr.dtype), (st, tuple(s + p for s, p in zip(st, PATCH)))), arr.shape, args.reads)
            print(f"| {chunks} | {blocks} | {codec} {clevel} | {dt:.1f} | {out.stat().st_size / 1e6:.0f} | {ms:.1f} |")
            del arr
            out.unlink()

    # -- throughput vs bound -----------------------------------------------------------------
    dl1 = work / "series"
    dl2 = work / "split"
    if not dl2.is_dir():
        half = args.depth // 2
        link_subset(series, dl2 / "unannotated_vessel" / "a" / "C00", 0, half)
        link_subset(series, dl2 / "unannotated_vessel" / "b" / "C00", half, args.depth)
    # bound, 1 worker and 2 workers interleaved, ``--rounds`` times: medians resist the load of a
    # shared machine better than one run of each
    runs: dict[str, list] = {"bound": [], "one": [], "two": []}
    for _ in range(args.rounds):
        runs["bound"].append(bound_loop(series, work / "bound.b2nd", DEFAULT_CHUNKS, DEFAULT_BLOCKS, nthreads))
        runs["one"].append(child_ingest(dl1, work / "store1", 1, DEFAULT_CHUNKS, DEFAULT_BLOCKS))
        runs["two"].append(child_ingest(dl2, work / "store2", 2, DEFAULT_CHUNKS, DEFAULT_BLOCKS))
    one, two = runs["one"][-1], runs["two"][-1]
    bound = float(np.median(runs["bound"]))
    t_one = float(np.median([r["seconds"] for r in runs["one"]]))
    t_two = float(np.median([r["seconds"] for r in runs["two"]]))

    def values(xs):
        return ", ".join(f"{x:.1f}" for x in xs)

    print(f"\nthroughput, {gib:.2f} GiB, chunks {DEFAULT_CHUNKS}, blocks {DEFAULT_BLOCKS}, median of {args.rounds} "
          f"interleaved rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| run | seconds (median; all) | MiB/s | ratio to bound |")
    print("|---|---|---|---|")
    mib = gib * 1024
    print(f"| bound loop (tifffile + blosc2) | {bound:.1f}; {values(runs['bound'])} | {mib / bound:.0f} | 1.00 |")
    print(f"| ingest, 1 worker | {t_one:.1f}; {values(r['seconds'] for r in runs['one'])} | {mib / t_one:.0f} "
          f"| {bound / t_one:.2f} |")
    print(f"| ingest, 2 workers (2 volumes of depth/2) | {t_two:.1f}; {values(r['seconds'] for r in runs['two'])} "
          f"| {mib / t_two:.0f} | {bound / t_two:.2f} |")

    # -- peak memory -------------------------------------------------------------------------
    half_dl = work / "half"
    if not half_dl.is_dir():
        link_subset(series, half_dl / "unannotated_vessel" / "h" / "C00", 0, args.depth // 2)
    mem_half = child_ingest(half_dl, work / "store_half", 1, DEFAULT_CHUNKS, DEFAULT_BLOCKS)
    print("\n| depth (slices) | peak RSS of ingest process, MB |")
    print("|---|---|")
    print(f"| {args.depth // 2} | {mem_half['rss_self_mb']:.0f} |")
    print(f"| {args.depth} | {one['rss_self_mb']:.0f} |")
    print(f"(2-worker run: parent {two['rss_self_mb']:.0f} MB, largest worker {two['rss_children_mb']:.0f} MB)")

    # -- random reads: store vs nnU-Net preprocessed .b2nd -----------------------------------
    store = PretrainingStore(work / "store1")
    name = store.volumes[0].name
    ms_store = random_reads(lambda st: store.read_patch(name, st, PATCH), store.volumes[0].shape, args.reads)
    ms_norm = random_reads(lambda st: normalize_image(store.read_patch(name, st, PATCH)), store.volumes[0].shape,
                           args.reads)
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    pre = work / "nnunet_pre"
    shutil.rmtree(pre, ignore_errors=True)
    pre.mkdir()
    data = store.read_patch(name, (0, 0, 0), store.volumes[0].shape)[None].astype(np.float32)
    data -= data.mean()
    data /= data.std()
    seg = np.zeros(data.shape, np.int16)
    blocks, chunks = comp_blosc2_params(data.shape, PATCH, data.itemsize)
    t = time.perf_counter()
    nnUNetDatasetBlosc2.save_case(data, seg, {}, str(pre / "case"), chunks=chunks, blocks=blocks)
    t_save = time.perf_counter() - t
    del data, seg
    ds = nnUNetDatasetBlosc2(str(pre), ["case"])
    arr = ds.load_case("case")[0]
    ms_nn = random_reads(lambda st: arr[(0, *tuple(slice(s, s + p) for s, p in zip(st, PATCH)))],
                         arr.shape[1:], args.reads)
    print(f"\nrandom {PATCH} reads, mean of {args.reads}")
    print("| source | chunks / blocks | ms per patch |")
    print("|---|---|---|")
    print(f"| store (uint16, read_patch) | {DEFAULT_CHUNKS} / {DEFAULT_BLOCKS} | {ms_store:.1f} |")
    print(f"| store + normalize_image (float32 out) | same | {ms_norm:.1f} |")
    print(f"| nnU-Net preprocessed .b2nd (float32, save_case in {t_save:.0f} s) | {chunks} / {blocks} | {ms_nn:.1f} |")
    bytes_nn = sum(f.stat().st_size for f in pre.glob("case.b2nd"))
    print(f"(store on disk {sum(f.stat().st_size for f in (work / 'store1').rglob('*.b2nd')) / 1e6:.0f} MB; "
          f"nnU-Net case {bytes_nn / 1e6:.0f} MB)")
    for p in ("store1", "store2", "store_half", "nnunet_pre", "bound.b2nd"):
        q = work / p
        shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
