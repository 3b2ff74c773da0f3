"""Drawing SELMA3D-like light-sheet volumes with exact masks.

A :class:`LightSheetScene` holds everything that defines one synthetic sample (tissue outline,
illumination, the list of drawn objects) as functions of *global* voxel coordinates, so any
z-range can be rendered on its own: rendering ``[0, 64)`` at once or as ``[0, 8)``, ``[8, 16)``...
gives byte-identical arrays. That is what lets :func:`~nnunetv2_selma.synthetic.download.write_unannotated_volume`
write a 1024^3 volume slab by slab with memory bounded by one slab (plus a blur halo).

Image model (per channel, in photo-electrons, then a camera):
``emitted = (autofluorescence texture * tissue + objects inside tissue) * depth attenuation * stripe shadows``,
``blurred = anisotropic Gaussian PSF (elongated in z)``,
``counts = blurred + sqrt(blurred) * N(0, 1) + read noise`` (the Gaussian form of Poisson-Gaussian
noise; the shot-noise variance equals the signal), plus a camera offset. Noise is drawn per z plane
from a generator seeded by (scene seed, channel, z), which keeps slab-wise rendering identical.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import expit

from nnunetv2_selma.structures import unannotated_folder_structures
from nnunetv2_selma.synthetic.domains import AcquisitionDomain

#: what the generator can draw (the ``synthetic`` field of :data:`nnunetv2_selma.structures.STRUCTURES`)
STRUCTURES = ("vessel", "nuclei", "cfos", "plaques", "microglia")
# names the unannotated download uses for its folders -> the structure drawn
STRUCTURE_ALIASES = unannotated_folder_structures()

_CAMERA_OFFSET = 100.0  # dark level of an sCMOS camera, in counts
_READ_NOISE = 3.0
_INT16_SHIFT = 400.0  # int16 data: background sits below zero, as in some signed-16-bit deposits
_PSF_SIGMA = (1.6, 0.7, 0.7)  # (z, y, x): light-sheet axial resolution is worse than lateral
_TRUNCATE = 3.0
BLUR_HALO = int(math.ceil(_TRUNCATE * _PSF_SIGMA[0])) + 1


def _blur_halo(psf_z: float) -> int:
    return int(math.ceil(_TRUNCATE * psf_z)) + 1


def canonical_structure(structure: str) -> str:
    """Map a structure or an unannotated folder name (``ab_plaque``, ``nucleus``...) to one of ``STRUCTURES``.

    Raises
    ------
    ValueError naming the value and the accepted names.
    """
    name = STRUCTURE_ALIASES.get(structure, structure)
    if name not in STRUCTURES:
        raise ValueError(
            f"unknown structure {structure!r}; expected one of {', '.join(STRUCTURES)} "
            f"or {', '.join(STRUCTURE_ALIASES)}"
        )
    return name


def n_channels(structure: str) -> int:
    """Number of image channels drawn for ``structure`` (2 for vessels: WGA + Evans blue, else 1)."""
    return 2 if canonical_structure(structure) == "vessel" else 1


class _SmoothField:
    """A smooth random field on a coarse lattice, evaluated by separable Gaussian weights.

    Evaluating a z-range only touches that range, so fields are identical whatever the slab size.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], step: float) -> None:
        self.step = float(step)
        self.knots = [np.arange(-1, int(math.ceil(s / step)) + 2) * step for s in shape]
        self.values = rng.normal(0.0, 1.0, size=tuple(len(k) for k in self.knots)).astype(np.float32)

    def _weights(self, coords: np.ndarray, axis: int) -> np.ndarray:
        w = np.exp(-(((coords[:, None] - self.knots[axis][None, :]) / self.step) ** 2)).astype(np.float32)
        return w / w.sum(axis=1, keepdims=True) * 1.7  # 1.7 keeps the field's std near 1

    def __call__(self, z0: int, z1: int, ny: int, nx: int) -> np.ndarray:
        wz = self._weights(np.arange(z0, z1, dtype=np.float64), 0)
        wy = self._weights(np.arange(ny, dtype=np.float64), 1)
        wx = self._weights(np.arange(nx, dtype=np.float64), 2)
        f = np.einsum("zk,klm->zlm", wz, self.values)
        f = np.einsum("yl,zlm->zym", wy, f)
        return np.ascontiguousarray(f @ wx.T)

    def at(self, points: np.ndarray) -> np.ndarray:
        """Field values at ``points`` (N, 3) in voxel coordinates."""
        wz, wy, wx = (self._weights(points[:, a].astype(np.float64), a) for a in range(3))
        return np.einsum("nk,nl,nm,klm->n", wz, wy, wx, self.values)


def _scattered_centres(rng: np.random.Generator, shape, spacing: float, min_dist: float,
                       rounds: int = 4) -> np.ndarray:
    """Random object centres, about one per ``spacing**3`` voxels, no two closer than ``min_dist``.

    Random sequential addition in a few vectorised rounds: each round draws a batch of uniform
    candidates, drops those too close to an accepted centre, and of each close pair inside the
    batch drops the later one. Dense packings (nuclei) and 10^5 objects cost well under a second.
    """
    from scipy.spatial import cKDTree

    shape = np.asarray(shape, float)
    n_total = rng.poisson(float(np.prod(shape)) / spacing**3)
    accepted = np.zeros((0, 3))
    for r in range(rounds):
        batch = rng.uniform(0, 1, (n_total // rounds + (r < n_total % rounds), 3)) * (shape - 0.5)
        if len(accepted) and len(batch):
            dist, _ = cKDTree(accepted).query(batch, k=1, distance_upper_bound=min_dist)
            batch = batch[np.isinf(dist)]
        if len(batch) > 1:
            pairs = cKDTree(batch).query_pairs(min_dist, output_type="ndarray")
            keep = np.ones(len(batch), bool)
            keep[pairs.max(axis=1)] = False
            batch = batch[keep]
        accepted = np.concatenate([accepted, batch])
    return accepted


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _grow_tree(rng, segments, start, direction, radius, shape, *, seg_len, wiggle, p_branch, r_min, decay,
               max_steps, z_damp, brightness, max_segments):
    """Append capsules (z0, y0, x0, z1, y1, x1, r0, r1, b...) of one branching tree to ``segments``."""
    stack = [(np.asarray(start, float), np.asarray(direction, float), float(radius), max_steps)]
    lim = np.asarray(shape, float)
    while stack and len(segments) < max_segments:
        pos, d, r, steps = stack.pop()
        for _ in range(steps):
            d = d + rng.normal(0, wiggle, 3)
            d[0] *= z_damp
            d /= np.linalg.norm(d) + 1e-9
            new = pos + d * seg_len * rng.uniform(0.7, 1.3) * max(1.0, r / 2.5)
            r_new = max(r * decay, r_min)
            segments.append((*pos, *new, r, r_new, *brightness(r)))
            pos, r = new, r_new
            if np.any(pos < -2 * r) or np.any(pos > lim + 2 * r):
                break
            if rng.random() < p_branch:
                perp = np.cross(d, _random_unit(rng))
                perp /= np.linalg.norm(perp) + 1e-9
                angle = rng.uniform(0.5, 1.2)
                rc = r * rng.uniform(0.5, 0.85)
                if rc >= r_min * 0.99:
                    stack.append((pos.copy(), math.cos(angle) * d + math.sin(angle) * perp, rc,
                                  max(2, int(steps * 0.8))))
                r = max(r * 0.92, r_min)


class LightSheetScene:
    """One synthetic light-sheet sample: renders any z-range of its channels and exact mask.

    Parameters
    ----------
    structure : one of ``STRUCTURES`` (or an alias such as ``ab_plaque``).
    shape : (z, y, x) of the whole sample, each >= 1.
    seed : everything (objects, illumination, noise) derives from it.
    whole_sample : True draws a whole tissue block (dark margin all round, as in the unannotated
        volumes); False draws a patch cut from inside tissue, sometimes crossing its edge.
    dtype : ``uint16`` or ``int16`` (int16 shifts the camera so the dark background is negative).
    contrast : multiplies every object's brightness (the autofluorescence background stays): 1.0 is
        the default scene, lower values give dim, low-SNR objects closer to the background, as in
        weakly stained or deep tissue. The objects and the mask do not depend on it.
    domain : imaging conditions (:class:`~nnunetv2_selma.synthetic.domains.AcquisitionDomain`): PSF,
        photon budget, autofluorescence level and texture, stripes, depth attenuation, object size and
        brightness spread, and hard negatives (bright unlabelled look-alikes of the target, painted into
        the image but not the mask). The scene jitters the domain's values a little. ``None`` (default)
        draws the default scene, byte for byte as without this option.
    """

    def __init__(self, structure: str, shape: tuple[int, int, int], seed: int, whole_sample: bool = False,
                 dtype: str = "uint16", contrast: float = 1.0, domain: AcquisitionDomain | None = None) -> None:
        self.structure = canonical_structure(structure)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be 3 positive ints (z, y, x); got {shape}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype("uint16"), np.dtype("int16")):
            raise ValueError(f"dtype must be uint16 or int16; got {dtype}")
        self.seed = int(seed)
        self.n_channels = n_channels(self.structure)
        rng = np.random.default_rng([self.seed, 1])
        shp = np.asarray(self.shape, float)
        # tissue: a wobbly ellipsoid; a patch sees a piece of a much larger one
        if whole_sample:
            self.centre = shp / 2 * (1 + rng.uniform(-0.05, 0.05, 3))
            self.radii = shp / 2 * rng.uniform(0.78, 0.92, 3)
        else:
            big = 3.0 * shp.max()
            self.radii = np.full(3, big)
            # the patch centre lies delta voxels inside the surface: far inside, or close enough to see the edge
            far_inside = rng.random() < 0.5
            delta = rng.uniform(0.6, 1.5) if far_inside else rng.uniform(0.05, 0.3)
            direction = _random_unit(rng)
            self.centre = shp / 2 - direction * (big - delta * shp.max())
        self.tissue_field = _SmoothField(rng, self.shape, step=max(8.0, shp.max() / 4))
        self.texture = _SmoothField(rng, self.shape, step=rng.uniform(12.0, 20.0))
        self.autofluo = rng.uniform(120, 260) * np.array([1.0, 0.6])[: self.n_channels]
        # illumination: absorption along z (detection depth) and from both light-sheet sides along x
        self.att_z_len = rng.uniform(1.5, 4.0) * max(shp[0], 64.0)
        self.att_z_off = 0.0 if whole_sample else rng.uniform(0, 2.0) * shp[0]
        self.att_x_len = rng.uniform(1.0, 3.0) * max(shp[2], 64.0)
        n_stripes = max(2, int(shp[1] / rng.uniform(20, 40)))
        self.stripes = np.column_stack([
            rng.uniform(0, shp[1], n_stripes),  # y position at z=0
            rng.uniform(-0.3, 0.3, n_stripes),  # drift in y per z plane
            rng.uniform(0.8, 4.0, n_stripes),  # width
            rng.uniform(0.15, 0.55, n_stripes),  # shadow depth
        ])
        self.ripple = (rng.uniform(5, 12), rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.08))
        self.ellipsoids, self.capsules = self._draw_objects(rng)
        if not contrast > 0:
            raise ValueError(f"contrast must be > 0; got {contrast}")
        self.psf, self.texture_amp, self.photons = _PSF_SIGMA, 0.2, 1.0
        self.negative_ellipsoids = np.zeros((0, 6 + self.n_channels))
        self.negative_capsules = np.zeros((0, 8 + self.n_channels))
        self.domain = None
        if domain is not None:  # after every default draw: without a domain the random stream is unchanged
            self._apply_domain(domain)
        if contrast != 1.0:  # after drawing: the random stream, hence objects and mask, stay the same
            for rows, first in ((self.ellipsoids, 6), (self.capsules, 8), (self.negative_ellipsoids, 6),
                                (self.negative_capsules, 8)):
                rows[:, first:] *= contrast
        self.blur_halo = _blur_halo(self.psf[0])

    # ------------------------------------------------------------------ acquisition domain
    def _apply_domain(self, domain: AcquisitionDomain) -> None:
        rng = np.random.default_rng([self.seed, 5])
        dom = domain.jittered(rng)
        self.domain = dom
        self.psf, self.texture_amp, self.photons = dom.psf_sigma, dom.texture_amp, dom.photons
        self.texture = _SmoothField(rng, self.shape, step=dom.texture_scale)
        self.autofluo = dom.autofluo * np.array([1.0, 0.6])[: self.n_channels]
        self.att_z_len /= dom.depth
        self.stripes[:, 3] = np.clip(self.stripes[:, 3] * dom.stripes, 0.0, 0.9)
        # object size and brightness: radii scaled, each object's brightness log-normally spread
        E, K = self.ellipsoids, self.capsules
        E[:, 3:6] *= dom.size
        K[:, 6:8] *= dom.size
        E[:, 6:] *= dom.brightness * rng.lognormal(0.0, dom.spread, (len(E), 1))
        K[:, 8:] *= dom.brightness * rng.lognormal(0.0, dom.spread, (len(K), 1))
        self.negative_ellipsoids, self.negative_capsules = self._draw_negatives(rng, dom)

    def _draw_negatives(self, rng: np.random.Generator, dom: AcquisitionDomain) -> tuple[np.ndarray, np.ndarray]:
        """Hard negatives: bright look-alikes of the target that differ in shape or size only.

        Nuclei get vessel-wall fragments (thin tubes); c-Fos cells and plaques get autofluorescent
        debris (small bright grains) and elongated cell bodies; vessels get round cell bodies; all as
        bright as the targets (``negative_brightness``), inside tissue, away from target centres.
        """
        from scipy.spatial import cKDTree

        C, shape = self.n_channels, np.asarray(self.shape, float)
        targets = self.ellipsoids if len(self.ellipsoids) else self.capsules
        n_targets = max(1, len(self.ellipsoids) if len(self.ellipsoids) else len(self.capsules) // 8)
        first = 6 if len(self.ellipsoids) else 8
        level = float(np.median(targets[:, first])) if len(targets) else 1000.0 * dom.brightness
        n = rng.poisson(dom.negatives * n_targets)
        centres = rng.uniform(0, 1, (n, 3)) * (shape - 0.5)
        centres = centres[self._tissue_at(centres)]
        if len(self.ellipsoids) and len(centres):
            dist, _ = cKDTree(self.ellipsoids[:, :3]).query(centres, k=1)
            centres = centres[dist > 1.2 * self.ellipsoids[:, 3:6].max() + 2.0]
        ell, caps = [], []

        def bright() -> list[float]:
            b = level * dom.negative_brightness * rng.lognormal(0.0, 0.25)
            return [b] + [b * 0.5] * (C - 1)

        look_alike = {"nuclei": "tube", "cfos": "grain_or_body", "plaques": "grain_or_body",
                      "microglia": "grain_or_body", "vessel": "blob"}[self.structure]
        for c in centres:
            kind = look_alike
            if kind == "grain_or_body":
                kind = "grain" if rng.random() < 0.5 else "body"
            if kind == "grain":  # debris / lipofuscin: a few small bright grains
                for _ in range(int(rng.integers(1, 4))):
                    ell.append([*(c + rng.normal(0, 2.0, 3)), *rng.uniform(1.0, 1.8, 3) * dom.size, *bright()])
            elif kind == "blob":
                ell.append([*c, *rng.uniform(3.0, 4.5, 3) * dom.size, *bright()])
            else:  # a straight tube: vessel wall (thin, long) or elongated cell body (thicker, shorter)
                d = np.asarray([rng.normal(0, 0.3), rng.normal(), rng.normal()])
                d /= np.linalg.norm(d) + 1e-9
                r, half = (rng.uniform(1.1, 1.8), rng.uniform(6, 12)) if kind == "tube" else \
                    (rng.uniform(2.0, 3.0), rng.uniform(4, 7))
                r *= dom.size
                caps.append([*(c - d * half), *(c + d * half), r, r, *bright()])
        return (np.asarray(ell, float).reshape(-1, 6 + C), np.asarray(caps, float).reshape(-1, 8 + C))

    # ------------------------------------------------------------------ objects
    def _tissue_at(self, points: np.ndarray) -> np.ndarray:
        if len(points) == 0:
            return np.zeros(0, bool)
        q = (((points - self.centre) / self.radii) ** 2).sum(1) + 0.12 * self.tissue_field.at(points)
        return q < 0.97

    def _fallback_point(self, rng: np.random.Generator) -> np.ndarray:
        """A point inside the sample and, if any of 64 candidates is, inside tissue: where a scene
        whose random draw placed no object gets one (an annotated patch never has an empty mask)."""
        shp = np.asarray(self.shape, float)
        candidates = np.vstack([shp / 2, rng.uniform(0, 1, (64, 3)) * (shp - 0.5)])
        inside = candidates[self._tissue_at(candidates)]
        return inside[0] if len(inside) else shp / 2

    def _draw_objects(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Ellipsoids (N, 6 + C): cz cy cx rz ry rx b..; capsules (M, 8 + C): z0 y0 x0 z1 y1 x1 r0 r1 b.."""
        s, shape, C = self.structure, self.shape, self.n_channels
        ell, caps = [], []
        if s in ("nuclei", "cfos", "microglia"):
            spacing, rmin, rmax, bmin, bmax = {
                "nuclei": (9.0, 3.0, 4.8, 500, 1500),
                "cfos": (22.0, 3.0, 6.0, 1000, 2800),
                "microglia": (30.0, 3.0, 4.0, 1500, 2500),
            }[s]
            centres = _scattered_centres(rng, shape, spacing, 2 * rmax + 1.0)
            centres = centres[self._tissue_at(centres)]
            if not len(centres):  # sparse structures (microglia) can draw none: never an empty mask
                centres = self._fallback_point(rng)[None]
            radii = rng.uniform(rmin, rmax, (len(centres), 3))
            radii[:, 0] = np.clip(radii[:, 0] * rng.uniform(0.9, 1.2, len(centres)), rmin, rmax)
            b = rng.uniform(bmin, bmax, (len(centres), 1))
            ell.append(np.column_stack([centres, radii, b]))
            if s == "microglia":
                for c, r in zip(centres, radii):
                    for _ in range(rng.integers(3, 6)):
                        d = _random_unit(rng)
                        _grow_tree(rng, caps, c + d * r.min() * 0.8, d, 1.3, shape, seg_len=3.0, wiggle=0.35,
                                   p_branch=0.3, r_min=1.0, decay=0.93, max_steps=int(rng.integers(3, 6)),
                                   z_damp=1.0, brightness=lambda r: (rng.uniform(1500, 2500),), max_segments=10**7)
        elif s == "plaques":
            centres = _scattered_centres(rng, shape, 32.0, 26.0)
            centres = centres[self._tissue_at(centres)]
            if not len(centres):
                centres = self._fallback_point(rng)[None]
            for c in centres:
                b = rng.uniform(1500, 4000)
                ell.append([[*c, *rng.uniform(4.0, 7.0, 3), b]])
                for _ in range(rng.integers(2, 6)):  # lobes make the outline irregular
                    off = rng.normal(0, 3.0, 3)
                    ell.append([[*(c + off), *rng.uniform(2.5, 5.0, 3), b * rng.uniform(0.4, 0.8)]])
        elif s == "vessel":
            vol = float(np.prod(shape))
            n_roots = max(3, int(round(vol / 30.0**3)))
            z_damp = min(1.0, 3.0 * shape[0] / max(shape[1], shape[2]))

            def brightness(r):  # WGA labels every vessel; Evans blue fills the major ones
                return (rng.uniform(1500, 2600), rng.uniform(2000, 4000) if r > 2.5 else rng.uniform(30, 120))

            for _ in range(n_roots):
                start = rng.uniform(0, 1, 3) * np.asarray(shape)
                if not self._tissue_at(start[None])[0]:
                    continue
                d = _random_unit(rng)
                large = rng.random() < 0.3  # a few arteries/veins, mostly capillary networks
                r0 = rng.uniform(2.5, 5.5) if large else rng.uniform(1.1, 1.8)
                for sign in (1, -1):
                    _grow_tree(rng, caps, start, sign * d, r0, shape, seg_len=4.0, wiggle=0.3,
                               p_branch=0.12 if large else 0.25, r_min=1.1, decay=0.985,
                               max_steps=int(rng.integers(10, 25)), z_damp=z_damp, brightness=brightness,
                               max_segments=10**7)
            if not caps:  # no root fell in tissue: one capillary tree from a tissue point
                start, d = self._fallback_point(rng), _random_unit(rng)
                for sign in (1, -1):
                    _grow_tree(rng, caps, start, sign * d, 1.5, shape, seg_len=4.0, wiggle=0.3, p_branch=0.25,
                               r_min=1.1, decay=0.985, max_steps=12, z_damp=z_damp, brightness=brightness,
                               max_segments=10**7)
        ell = np.concatenate([np.asarray(e, float).reshape(-1, 6 + C) for e in ell]) if ell else np.zeros((0, 6 + C))
        caps = np.asarray(caps, float).reshape(-1, 8 + C)
        return ell, caps

    # ------------------------------------------------------------------ rendering
    def _paint(self, za: int, zb: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean object signal (C, zb-za, Y, X) float32 and object mask for z in [za, zb)."""
        _, ny, nx = self.shape
        sig = np.zeros((self.n_channels, zb - za, ny, nx), np.float32)
        mask = np.zeros((zb - za, ny, nx), bool)
        self._paint_ellipsoids(self.ellipsoids, za, zb, sig, mask)
        self._paint_capsules(self.capsules, za, zb, sig, mask)
        # hard negatives: in the image, never in the mask
        self._paint_ellipsoids(self.negative_ellipsoids, za, zb, sig, None)
        self._paint_capsules(self.negative_capsules, za, zb, sig, None)
        return sig, mask

    def _paint_ellipsoids(self, E: np.ndarray, za: int, zb: int, sig: np.ndarray, mask: np.ndarray | None) -> None:
        _, ny, nx = self.shape
        sel = E[(E[:, 0] + E[:, 3] >= za - 1) & (E[:, 0] - E[:, 3] <= zb)]
        for row in sel:
            c, r, b = row[:3], row[3:6], row[6:]
            lo = np.maximum(np.floor(c - r).astype(int), (za, 0, 0))
            hi = np.minimum(np.ceil(c + r).astype(int) + 1, (zb, ny, nx))
            if np.any(hi <= lo):
                continue
            axes = [(np.arange(lo[a], hi[a]) - c[a]) / r[a] for a in range(3)]
            q = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
            inside = q <= 1.0
            prof = np.where(inside, 0.35 + 0.65 * np.sqrt(np.clip(1.0 - q, 0, 1)), 0).astype(np.float32)
            region = (slice(lo[0] - za, hi[0] - za), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            for ch in range(self.n_channels):
                np.maximum(sig[ch][region], b[ch] * prof, out=sig[ch][region])
            if mask is not None:
                mask[region] |= inside

    def _paint_capsules(self, K: np.ndarray, za: int, zb: int, sig: np.ndarray, mask: np.ndarray | None) -> None:
        _, ny, nx = self.shape
        if len(K):
            zmin = np.minimum(K[:, 0], K[:, 3]) - np.maximum(K[:, 6], K[:, 7])
            zmax = np.maximum(K[:, 0], K[:, 3]) + np.maximum(K[:, 6], K[:, 7])
            for row in K[(zmax >= za - 1) & (zmin <= zb)]:
                a, bpt, r0, r1, bright = row[:3], row[3:6], row[6], row[7], row[8:]
                rmax = max(r0, r1)
                lo = np.maximum(np.floor(np.minimum(a, bpt) - rmax).astype(int), (za, 0, 0))
                hi = np.minimum(np.ceil(np.maximum(a, bpt) + rmax).astype(int) + 1, (zb, ny, nx))
                if np.any(hi <= lo):
                    continue
                ab = bpt - a
                l2 = float(ab @ ab) + 1e-9
                p = [np.arange(lo[k], hi[k], dtype=np.float32) - a[k] for k in range(3)]
                p = [p[0][:, None, None], p[1][None, :, None], p[2][None, None, :]]
                t = np.clip((p[0] * ab[0] + p[1] * ab[1] + p[2] * ab[2]) / l2, 0, 1)
                d2 = (p[0] - t * ab[0]) ** 2 + (p[1] - t * ab[1]) ** 2 + (p[2] - t * ab[2]) ** 2
                rr = r0 + t * (r1 - r0)
                u = d2 / rr**2
                inside = u <= 1.0
                region = (slice(lo[0] - za, hi[0] - za), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
                for ch in range(self.n_channels):
                    if ch == 0 and self.structure == "vessel":
                        # WGA stains the endothelium: large vessels look hollow, capillaries filled
                        prof = np.where(rr > 3.0, 0.45 + 0.55 * u, 1.0 - 0.3 * u)
                    else:
                        prof = 0.4 + 0.6 * np.sqrt(np.clip(1.0 - u, 0, 1))
                    val = np.where(inside, bright[ch] * prof, 0).astype(np.float32)
                    np.maximum(sig[ch][region], val, out=sig[ch][region])
                if mask is not None:
                    mask[region] |= inside

    def _tissue(self, za: int, zb: int) -> np.ndarray:
        _, ny, nx = self.shape
        z = ((np.arange(za, zb) - self.centre[0]) / self.radii[0]) ** 2
        y = ((np.arange(ny) - self.centre[1]) / self.radii[1]) ** 2
        x = ((np.arange(nx) - self.centre[2]) / self.radii[2]) ** 2
        q = self.tissue_field(za, zb, ny, nx)
        q *= 0.12
        q += z[:, None, None].astype(np.float32)
        q += y[None, :, None].astype(np.float32)
        q += x[None, None, :].astype(np.float32)
        # the edge is about two voxels wide whatever the ellipsoid size
        q -= 0.97
        q *= -float(self.radii.min()) / 4.0
        return expit(q, out=q)

    def _illumination(self, za: int, zb: int) -> np.ndarray:
        _, ny, nx = self.shape
        z = np.arange(za, zb, dtype=np.float32)
        y = np.arange(ny, dtype=np.float32)
        x = np.arange(nx, dtype=np.float32)
        att_z = np.exp(-(z + self.att_z_off) / self.att_z_len)
        att_x = 0.5 * (np.exp(-x / self.att_x_len) + np.exp(-(nx - 1 - x) / self.att_x_len))
        att_x = att_x / att_x.max()
        # stripe shadows run along x (the light-sheet propagation axis): a function of (z, y) only
        shade = np.ones((zb - za, ny), np.float32)
        for y0, drift, w, depth in self.stripes:
            yc = y0 + drift * z
            shade *= 1.0 - depth * np.exp(-(((y[None, :] - yc[:, None]) / w) ** 2))
        period, phase, amp = self.ripple
        shade *= 1.0 + amp * np.sin(2 * np.pi * y / period + phase)[None, :]
        # separable factors, never a full 3D array: (z, y, 1) and (1, 1, x)
        return (att_z[:, None] * shade)[:, :, None].astype(np.float32), att_x[None, None, :].astype(np.float32)

    def render(self, z0: int, z1: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Render planes ``z0:z1``.

        Returns
        -------
        channels : list of ``n_channels`` arrays (z1-z0, y, x) of the scene dtype
        mask : bool array (z1-z0, y, x), the exact object support (objects outside tissue removed)

        Rendering any split of ``[0, z)`` into ranges and concatenating gives the same arrays as
        rendering it at once: blur context comes from a halo of ``blur_halo`` planes (``BLUR_HALO``
        without a domain).
        """
        nz = self.shape[0]
        if not 0 <= z0 < z1 <= nz:
            raise ValueError(f"z range [{z0}, {z1}) is outside the scene's 0..{nz}")
        za, zb = max(0, z0 - self.blur_halo), min(nz, z1 + self.blur_halo)
        # memory: about five float32 arrays of (zb - za, y, x) at the peak (two more for vessels)
        sig, mask = self._paint(za, zb)
        background = self._tissue(za, zb)
        inside = background > 0.5
        mask &= inside
        sig *= inside  # objects end where the tissue ends, so no unmasked signal remains outside
        del inside
        texture = self.texture(za, zb, self.shape[1], self.shape[2])
        texture *= self.texture_amp
        texture += 1.0
        np.clip(texture, 0.2, None, out=texture)
        background *= texture  # autofluorescence pattern, zero outside the tissue
        del texture
        light_zy, light_x = self._illumination(za, zb)
        channels = []
        for ch in range(self.n_channels):
            emitted = background * np.float32(self.autofluo[ch])
            emitted += sig[ch]
            emitted *= light_zy
            emitted *= light_x
            if self.photons != 1.0:  # the photon budget: fewer photo-electrons, relatively more shot noise
                emitted *= np.float32(self.photons)
            blurred = ndimage.gaussian_filter(emitted, self.psf, truncate=_TRUNCATE, mode="reflect", output=emitted)
            blurred = blurred[z0 - za: z1 - za]
            np.clip(blurred, 0, None, out=blurred)
            out = np.empty(blurred.shape, self.dtype)
            for i in range(z1 - z0):
                noise_rng = np.random.default_rng([self.seed, 2, ch, z0 + i])
                plane = blurred[i]
                counts = plane + np.sqrt(plane) * noise_rng.standard_normal(plane.shape, dtype=np.float32)
                counts += _READ_NOISE * noise_rng.standard_normal(plane.shape, dtype=np.float32) + _CAMERA_OFFSET
                np.rint(counts, out=counts)
                if self.dtype == np.int16:  # shift whole counts: int16 data = uint16 data - 400, exactly
                    counts -= _INT16_SHIFT
                info = np.iinfo(self.dtype)
                out[i] = np.clip(counts, info.min, info.max).astype(self.dtype)
            channels.append(out)
        return channels, mask[z0 - za: z1 - za].copy()


def render_patch(structure: str, shape: tuple[int, int, int], rng: np.random.Generator,
                 dtype: str = "uint16", contrast: float = 1.0,
                 domain: AcquisitionDomain | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw one annotated patch cut from inside cleared tissue.

    Parameters
    ----------
    structure : one of ``STRUCTURES`` (``microglia`` is the test-only tree-like structure).
    shape : (z, y, x), each >= 1.
    rng : the only source of randomness; the same generator state gives the same patch.
    dtype : ``uint16`` (default) or ``int16`` (background below zero).
    contrast : object brightness multiplier (see :class:`LightSheetScene`).
    domain : imaging conditions and hard negatives (see :class:`LightSheetScene`); ``None``: the default scene.

    Returns
    -------
    channels : list of arrays (z, y, x) of ``dtype``: 1 channel, or 2 for ``vessel``
        (``[0]`` WGA microvessels, ``[1]`` Evans blue major vessels).
    mask : bool (z, y, x), the exact object support.
    """
    scene = LightSheetScene(structure, shape, seed=int(rng.integers(2**63 - 1)), whole_sample=False, dtype=dtype,
                            contrast=contrast, domain=domain)
    return scene.render(0, scene.shape[0])
