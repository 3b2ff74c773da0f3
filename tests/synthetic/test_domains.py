"""Acquisition domains: what they change in a scene, and that the default scene does not see them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nnunetv2_selma.synthetic.domains import DOMAIN_RANGES, draw_domain, draw_domains
from nnunetv2_selma.synthetic.volumes import LightSheetScene, render_patch


def test_draw_domain_is_deterministic_and_within_its_ranges():
    domains = draw_domains(6, seed=3)
    assert [d.name for d in domains] == [f"domain{i}" for i in range(6)]
    assert draw_domain(4, seed=3) == domains[4] and draw_domain(4, seed=4) != domains[4]
    for d in domains:
        for key, (lo, hi) in DOMAIN_RANGES.items():
            assert lo <= getattr(d, key) <= hi, key
    jittered = domains[0].jittered(np.random.default_rng(0))
    assert jittered.name == domains[0].name and jittered.psf_z != domains[0].psf_z
    with pytest.raises(ValueError, match="index"):
        draw_domain(-1)


@pytest.mark.parametrize("structure", ["nuclei", "cfos", "plaques", "vessel"])
def test_hard_negatives_are_bright_and_never_in_the_mask(structure):
    # a bright, clean domain, so the look-alikes' contrast can be compared with the noise
    domain = replace(draw_domain(1, seed=0), photons=1.0, brightness=1.0, negatives=1.5)
    scene = LightSheetScene(structure, (32, 64, 64), seed=11, domain=domain)
    assert len(scene.negative_ellipsoids) + len(scene.negative_capsules) > 0
    channels, mask = scene.render(0, 32)
    # the same scene without its negatives: the mask is unchanged, the image loses the bright look-alikes
    plain = LightSheetScene(structure, (32, 64, 64), seed=11, domain=domain)
    plain.negative_ellipsoids = plain.negative_ellipsoids[:0]
    plain.negative_capsules = plain.negative_capsules[:0]
    plain_channels, plain_mask = plain.render(0, 32)
    assert np.array_equal(mask, plain_mask)
    added = channels[0].astype(np.float64) - plain_channels[0].astype(np.float64)
    background = plain_channels[0].astype(np.float64)[~mask]
    assert added[~mask].max() > background.std() * 3  # a look-alike stands out where nothing is labelled


def test_domains_change_the_imaging_and_render_identically_in_slabs():
    shape = (40, 48, 48)
    sharp = LightSheetScene("nuclei", shape, seed=2, domain=draw_domain(0, seed=0))
    scenes = {d: LightSheetScene("nuclei", shape, seed=2, domain=draw_domain(d, seed=0)) for d in range(4)}
    psfs = {d: s.psf[0] for d, s in scenes.items()}
    assert len(set(psfs.values())) == 4 and sharp.psf == scenes[0].psf
    whole, mask = scenes[1].render(0, 40)
    parts = [scenes[1].render(z, min(40, z + 7)) for z in range(0, 40, 7)]
    assert np.array_equal(whole[0], np.concatenate([p[0][0] for p in parts]))
    assert np.array_equal(mask, np.concatenate([p[1] for p in parts]))
    # a domain with a smaller photon budget is noisier relative to its signal
    low, high = (min(scenes.values(), key=lambda s: s.photons), max(scenes.values(), key=lambda s: s.photons))
    assert low.photons < high.photons


def test_render_patch_without_domain_is_the_default_scene():
    a, ma = render_patch("cfos", (24, 32, 32), np.random.default_rng(9))
    b, mb = render_patch("cfos", (24, 32, 32), np.random.default_rng(9), domain=None)
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(ma, mb)
    c, _ = render_patch("cfos", (24, 32, 32), np.random.default_rng(9), domain=draw_domain(2))
    assert c[0].tobytes() != a[0].tobytes()


def test_a_shifted_draw_puts_labelled_and_new_labs_in_opposite_halves():
    from nnunetv2_selma.synthetic.domains import _LOG_UNIFORM, SHIFTED

    plain, shifted = draw_domains(6, seed=2), draw_domains(6, seed=2, shift_from=3)
    assert draw_domains(6, seed=2, shift_from=None) == plain  # no shift: the draw every result was measured on
    for i, d in enumerate(shifted):
        for key, (lo, hi) in DOMAIN_RANGES.items():
            middle = np.sqrt(lo * hi) if key in _LOG_UNIFORM else (lo + hi) / 2
            value = getattr(d, key)
            if key not in SHIFTED:  # the look-alikes keep the plain draw
                assert value == getattr(plain[i], key), key
            elif i < 3:
                assert lo <= value <= middle, (i, key)
            else:
                assert middle <= value <= hi, (i, key)
    with pytest.raises(ValueError, match="part"):
        draw_domain(0, part="middle")
