"""Downsampling a brain larger than the memory it may use: TIFF slices read slab by slab, peak RSS bounded.

The brain (256 planes of 1024 x 1024 uint16: 512 MiB) is downsampled to a 50 um atlas grid in a child process
whose process-tree RSS is sampled every 20 ms: its peak must stay under ``PEAK_LIMIT_MB``, far below the image.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("brainglobe_space")

PLANES, SIDE = 256, 1024
IMAGE_MB = PLANES * SIDE * SIDE * 2 / 2**20
#: measured 81 MB (python, numpy, scipy and one 8-plane slab of 16 MiB)
PEAK_LIMIT_MB = 200


def _peak_rss_mb(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    out, err = process.communicate()
    return peak / 2**20, subprocess.CompletedProcess(command, process.returncode, out, err)


def test_downsampling_a_slice_folder_larger_than_allowed_memory_is_bounded(tmp_path):
    import tifffile

    folder = tmp_path / "brain"
    folder.mkdir()
    ramp = np.add.outer(np.arange(SIDE), np.arange(SIDE)).astype(np.uint16)
    for z in range(PLANES):  # written plane by plane: this process never holds the volume either
        tifffile.imwrite(folder / f"slice_{z:04d}.tif", ramp + np.uint16(z))
    script = textwrap.dedent(f"""
        import numpy as np
        from nnunetv2_selma.regions.downsample import downsample_volume
        from nnunetv2_selma.volumes import open_volume
        small = downsample_volume(open_volume({str(folder)!r}), (5.0, 5.0, 5.0), (50.0, 50.0, 50.0),
                                  slab_planes=8, progress=False)
        np.save({str(tmp_path / "small.npy")!r}, small)
    """)
    peak, done = _peak_rss_mb([sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr
    small = np.load(tmp_path / "small.npy")
    assert small.shape == (PLANES // 10 + (PLANES % 10 >= 5), SIDE // 10 + (SIDE % 10 >= 5),
                           SIDE // 10 + (SIDE % 10 >= 5))
    # a linear ramp averaged over an output voxel is its value at the voxel's centre
    centre = sum((j + 0.5) * n / m - 0.5 for j, n, m in zip((5, 40, 60), (PLANES, SIDE, SIDE), small.shape))
    assert small[5, 40, 60] == pytest.approx(centre, abs=0.5)
    print(f"peak RSS of the process tree {peak:.0f} MB for a {IMAGE_MB:.0f} MB image")
    assert peak < PEAK_LIMIT_MB < IMAGE_MB, f"peak RSS {peak:.0f} MB for a {IMAGE_MB:.0f} MB image"
