"""Pictures of a regions run: coronal sections of the registered brain with region outlines; densest regions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CORONAL_FRACTIONS = (0.3, 0.45, 0.6, 0.75)


def save_coronal_sections(path: str | Path, brain: np.ndarray, annotation: np.ndarray,
                          fractions: Sequence[float] = CORONAL_FRACTIONS, title: str = "") -> Path:
    """Coronal sections (axis 0 of ``asr`` volumes) of ``brain`` with the outlines of ``annotation`` in red.

    ``brain`` and ``annotation`` share one grid (the atlas annotation resampled onto the registered brain):
    outlines that follow the brain's edges and grey-level boundaries show a good registration.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    path = Path(path)
    planes = [min(brain.shape[0] - 1, int(f * brain.shape[0])) for f in fractions]
    fig, axes = plt.subplots(1, len(planes), figsize=(3.2 * len(planes), 3.4), squeeze=False)
    hi = float(np.percentile(brain, 99.5)) or 1.0
    for ax, z in zip(axes[0], planes):
        ax.imshow(brain[z], cmap="gray", vmin=0, vmax=hi)
        outline = np.ma.masked_where(~find_boundaries(annotation[z], mode="inner"), np.ones(brain.shape[1:]))
        ax.imshow(outline, cmap="autumn", alpha=0.9, interpolation="nearest")
        ax.set_title(f"coronal plane {z}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_densest_regions(path: str | Path, rows: Sequence[dict], top: int = 15) -> Path:
    """Bar chart of the ``top`` regions (per hemisphere) by objects per mm^3, from ``regions.csv`` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ranked = sorted((r for r in rows if r["volume_mm3"] > 0 and r["count"] > 0),
                    key=lambda r: r["density_per_mm3"], reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(3, len(ranked)) + 1))
    labels = [f"{r['acronym']} ({r['hemisphere'][0].upper()})" for r in ranked]
    ax.barh(range(len(ranked)), [r["density_per_mm3"] for r in ranked], color="tab:red")
    ax.set_yticks(range(len(ranked)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("objects per mm$^3$")
    ax.set_title(f"densest regions (top {len(ranked)})" if ranked else "no object inside a region")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["CORONAL_FRACTIONS", "save_coronal_sections", "save_densest_regions"]
