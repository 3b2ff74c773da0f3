"""Acquisition domains: the imaging conditions a light-sheet sample is recorded under.

Real SELMA3D data come from many brains, microscopes, clearing protocols and stains. A model trained on
a few patches of one of them meets, on the next brain, a different point spread function, photon
budget, autofluorescence, stripe pattern and object size, plus bright unlabelled structures that look
like its target (autofluorescent cell bodies and debris beside c-Fos cells and plaques, vessel walls
beside nuclei). :class:`AcquisitionDomain` holds one such set of conditions; :func:`draw_domain` draws
one from the stated :data:`DOMAIN_RANGES`; every scene recorded in a domain jitters its values a
little (:meth:`AcquisitionDomain.jittered`), as two samples of one lab differ. Drawn with ``part`` (or
:func:`draw_domains` with ``shift_from``), the imaging conditions come from one half of their ranges: the labelled
labs from the low half and the new ones from the high half, a systematic change of microscope, clearing and
stain instead of a draw from the same spread.

The generator's default output (no domain) is unchanged: a scene only reads a domain when given one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

#: (low, high) of every drawn condition; ``log`` ones are drawn log-uniformly
DOMAIN_RANGES: dict[str, tuple[float, float]] = {
    "psf_z": (1.0, 3.2),  # axial PSF sigma, voxels (the default scene: 1.6)
    "psf_xy": (0.5, 1.4),  # lateral PSF sigma, voxels (default 0.7)
    "photons": (0.15, 1.0),  # photo-electrons per unit of emitted signal: the photon budget (default 1)
    "autofluo": (80.0, 400.0),  # autofluorescence level, photo-electrons (default 120-260)
    "texture_amp": (0.1, 0.6),  # relative autofluorescence texture amplitude (default 0.2)
    "texture_scale": (4.0, 24.0),  # autofluorescence texture length, voxels (default 12-20)
    "stripes": (0.0, 1.6),  # multiplies the stripe shadows' depth (default 1)
    "depth": (0.3, 3.0),  # multiplies the depth attenuation rate (default 1)
    "size": (0.6, 1.6),  # multiplies object radii (default 1)
    "brightness": (0.3, 1.0),  # multiplies object brightness (default 1)
    "spread": (0.1, 0.7),  # log-normal sigma of per-object brightness (default 0)
    "negatives": (1.0, 3.0),  # hard negatives per target object (default 0)
    "negative_brightness": (0.8, 1.3),  # hard negatives' brightness relative to the targets'
}
_LOG_UNIFORM = {"photons", "autofluo", "texture_scale", "depth", "size", "brightness"}
#: what a change of lab moves (``part``): the imaging conditions and the apparent object size; the sample's
#: look-alikes (``negatives``, ``negative_brightness``) keep their whole range, labels alone tell them apart
SHIFTED = tuple(k for k in DOMAIN_RANGES if k not in ("negatives", "negative_brightness"))
#: the halves of a range ``part`` can name
PARTS = ("low", "high")
#: relative per-scene jitter of a domain's values (log-uniform within +-JITTER)
JITTER = 0.1


@dataclass(frozen=True)
class AcquisitionDomain:
    """One set of imaging conditions (see :data:`DOMAIN_RANGES` for units and ranges)."""

    name: str
    psf_z: float
    psf_xy: float
    photons: float
    autofluo: float
    texture_amp: float
    texture_scale: float
    stripes: float
    depth: float
    size: float
    brightness: float
    spread: float
    negatives: float
    negative_brightness: float

    @property
    def psf_sigma(self) -> tuple[float, float, float]:
        """(z, y, x) PSF sigma in voxels."""
        return (self.psf_z, self.psf_xy, self.psf_xy)

    def jittered(self, rng: np.random.Generator) -> AcquisitionDomain:
        """The same domain with every continuous value moved by up to ``JITTER`` (relative, log-uniform)."""
        values = {k: v * math.exp(rng.uniform(-JITTER, JITTER)) for k, v in asdict(self).items() if k != "name"}
        return replace(self, **values)

    def to_dict(self) -> dict:
        return asdict(self)


def draw_domain(index: int, seed: int = 0, part: str | None = None) -> AcquisitionDomain:
    """Domain number ``index`` of the family ``seed``: every value drawn from :data:`DOMAIN_RANGES`; with ``part``
    (``"low"`` or ``"high"``) the :data:`SHIFTED` values from that half of their range (halved on the scale they
    are drawn on). The same random numbers are used either way, so a part only moves where they land.

    Raises
    ------
    ValueError for a negative ``index`` or another ``part``.
    """
    if index < 0:
        raise ValueError(f"domain index must be >= 0; got {index}")
    if part is not None and part not in PARTS:
        raise ValueError(f"part must be None or one of {PARTS}; got {part!r}")
    rng = np.random.default_rng([int(seed), 77, int(index)])
    values = {}
    for key, (lo, hi) in DOMAIN_RANGES.items():
        a, b = (math.log(lo), math.log(hi)) if key in _LOG_UNIFORM else (lo, hi)
        if part is not None and key in SHIFTED:
            a, b = (a, (a + b) / 2) if part == "low" else ((a + b) / 2, b)
        value = rng.uniform(a, b)
        values[key] = float(math.exp(value) if key in _LOG_UNIFORM else value)
    return AcquisitionDomain(name=f"domain{index}", **values)


def draw_domains(n: int, seed: int = 0, shift_from: int | None = None) -> list[AcquisitionDomain]:
    """Domains ``0 .. n-1`` of the family ``seed``; with ``shift_from``, domains below it drawn from the ``"low"``
    half of the imaging ranges and the others from the ``"high"`` half (:func:`draw_domain`'s ``part``)."""
    if shift_from is None:
        return [draw_domain(i, seed) for i in range(n)]
    return [draw_domain(i, seed, "low" if i < shift_from else "high") for i in range(n)]
