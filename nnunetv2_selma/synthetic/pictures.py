"""Pictures of synthetic data: maximum-intensity projections with the mask outlined.

Panels are composed into one RGB mosaic in numpy (outline = mask boundary drawn at an upsampled
resolution, so it stays thin and the structure under it stays visible) and drawn by matplotlib
as a single image with labels: one axes, no layout engine, a fraction of a second per picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_OUTLINE = np.array([1.0, 0.2, 0.2])
_GAP = 6


def _panel_rgb(image: np.ndarray, mask: np.ndarray | None, zoom: int) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    image = image.astype(np.float32)
    lo, hi = np.percentile(image, (1.0, 99.8))
    # gamma 0.5, as light-sheet viewers are set: dim capillaries stay visible next to bright arteries
    grey = np.sqrt(np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1))
    grey = np.kron(grey, np.ones((zoom, zoom), np.float32))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if mask is not None and mask.any():
        big = np.kron(mask.astype(np.uint8), np.ones((zoom, zoom), np.uint8)).astype(bool)
        rgb[find_boundaries(big, mode="inner")] = _OUTLINE
    return rgb


def save_mip_picture(path: str | Path, panels: list[tuple[str, np.ndarray, np.ndarray | None]],
                     ncols: int = 3, title: str | None = None, panel_px: int = 320) -> Path:
    """Save a grid of 2D projections, each with its mask outline in red.

    Parameters
    ----------
    path : the ``.png`` to write (written under a temporary name, then moved into place).
    panels : ``(label, image2d, mask2d or None)``; ``image2d`` any numeric dtype, shown between its
        1st and 99.8th percentiles with gamma 0.5; ``mask2d`` bool of the same shape (its boundary is drawn).
    ncols : panels per row.
    panel_px : small panels are upsampled by an integer factor to at least this size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if not panels:
        raise ValueError(f"{path}: no panels to draw")
    largest = max(max(img.shape) for _, img, _ in panels)
    zoom = max(1, int(np.ceil(panel_px / largest)))
    rgbs = [_panel_rgb(img, m, zoom) for _, img, m in panels]
    ncols = max(1, min(ncols, len(panels)))
    nrows = int(np.ceil(len(panels) / ncols))
    cell_h = max(r.shape[0] for r in rgbs) + _GAP + 14  # room for the label above each panel
    cell_w = max(max(r.shape[1] for r in rgbs), 200) + _GAP  # labels need ~200 px
    mosaic = np.ones((nrows * cell_h, ncols * cell_w, 3), np.float32)
    corners = []
    for i, rgb in enumerate(rgbs):
        y, x = (i // ncols) * cell_h + 14, (i % ncols) * cell_w
        mosaic[y: y + rgb.shape[0], x: x + rgb.shape[1]] = rgb
        corners.append((x, y))
    head = 24 if title else 0
    dpi = 100
    fig = plt.figure(figsize=(mosaic.shape[1] / dpi, (mosaic.shape[0] + head) / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, mosaic.shape[0] / (mosaic.shape[0] + head)])
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for (label, _, _), (x, y) in zip(panels, corners):
        ax.text(x, y - 3, label, fontsize=7, va="bottom", ha="left")
    if title:
        fig.text(0.5, 1 - 4 / (mosaic.shape[0] + head), title, fontsize=9, ha="center", va="top")
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def projection_panels(name: str, channels: list[np.ndarray], mask: np.ndarray | None) -> list[tuple]:
    """Panels for one 3D case: per channel the z-MIP (top view) and the y-MIP (side view, z down).

    The side view shows the PSF elongation in z and the depth attenuation.
    """
    panels = []
    for i, image in enumerate(channels):
        panels.append((f"{name} C{i:02d} top (MIP z)", image.max(axis=0), None if mask is None else mask.any(axis=0)))
        panels.append((f"{name} C{i:02d} side (MIP y)", image.max(axis=1), None if mask is None else mask.any(axis=1)))
    return panels
