"""SELMA3D evaluation: metrics on hand-derivable topologies, leaderboard edge cases, the commands."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_selma.evaluation import leaderboard as lb
from nnunetv2_selma.evaluation import metrics as m
from nnunetv2_selma.volumes.images import write_image

# ---------------------------------------------------------------------------------------------
# shapes with known topology


def ball(shape=(30, 30, 30), radius=8.0) -> np.ndarray:
    z, y, x = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < radius**2


def hollow_shell(shape=(30, 30, 30)) -> np.ndarray:
    return ball(shape, 10) & ~ball(shape, 7)


def torus(shape=(30, 30, 30), big=8.0, small=3.0) -> np.ndarray:
    z, y, x = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    rho = np.sqrt((y - c[1]) ** 2 + (x - c[2]) ** 2)
    return (rho - big) ** 2 + (z - c[0]) ** 2 < small**2


def two_blobs(shape=(20, 20, 20)) -> np.ndarray:
    a = np.zeros(shape, bool)
    a[2:6, 2:6, 2:6] = True
    a[10:14, 10:14, 10:14] = True
    return a


def corner_touching(shape=(8, 8, 8)) -> np.ndarray:
    """Two 2^3 cubes sharing one corner point only: one object for 26-, two for 6-connectivity."""
    a = np.zeros(shape, bool)
    a[1:3, 1:3, 1:3] = True
    a[3:5, 3:5, 3:5] = True
    return a


def bar(shape=(9, 9, 30), length=24) -> np.ndarray:
    a = np.zeros(shape, bool)
    a[3:6, 3:6, 3 : 3 + length] = True
    return a


# ---------------------------------------------------------------------------------------------
# Betti numbers


@pytest.mark.parametrize(
    "make, expected",
    [
        (ball, (1, 0, 0)),  # solid ball: one piece, no tunnel, no cavity
        (two_blobs, (2, 0, 0)),
        (torus, (1, 1, 0)),  # one handle
        (hollow_shell, (1, 0, 1)),  # one enclosed cavity
        (corner_touching, (1, 0, 0)),  # 26-connected foreground joins them
    ],
)
def test_betti_numbers_of_known_topologies(make, expected):
    assert m.betti_numbers(make()) == expected


def test_corner_touching_is_two_objects_for_6_connectivity_but_one_for_betti():
    from scipy.ndimage import label

    assert label(corner_touching())[1] == 2  # the 6-connected view the spec does NOT use
    assert m.betti_numbers(corner_touching())[0] == 1


def test_cavity_leaking_through_a_corner_only_stays_a_cavity():
    """Background is 6-connected: a cavity that meets the outside at a corner point is still enclosed."""
    cube = np.zeros((11, 11, 11), bool)
    cube[2:9, 2:9, 2:9] = True
    cube[3:8, 3:8, 3:8] = False
    cube[2, 2, 2] = False  # outside now touches the cavity voxel (3,3,3) through a corner only
    assert m.betti_numbers(cube) == (1, 0, 1)


def test_betti_numbers_touching_the_border_are_padded():
    full = np.ones((4, 4, 4), bool)  # fills the image: without padding there would be no background
    assert m.betti_numbers(full) == (1, 0, 0)


def test_betti_errors_edge_cases():
    empty = np.zeros((20, 20, 20), bool)
    assert m.betti_errors(empty, empty) == (0, 0)
    assert m.betti_errors(empty, two_blobs()) == (2, 0)
    assert m.betti_errors(np.zeros((30, 30, 30)), torus()) == (1, 1)
    assert m.betti_errors(ball(), torus()) == (0, 1)


# ---------------------------------------------------------------------------------------------
# Dice, clDice, HD95, PQ


def test_dice_hand_values_and_empty_rules():
    p = np.zeros((4, 4, 4), bool)
    g = np.zeros((4, 4, 4), bool)
    p[0:2, 0:2, 0:2] = True  # 8 voxels
    g[1:3, 0:2, 0:2] = True  # 8 voxels, 4 shared
    assert m.dice(p, g) == pytest.approx(2 * 4 / 16)
    assert m.dice(np.zeros_like(p), np.zeros_like(g)) == 1.0
    assert m.dice(np.zeros_like(p), g) == 0.0
    assert m.dice(p.astype(np.uint8) * 255, g) == pytest.approx(0.5)  # binarised > 0


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \(4, 4, 4\).*\(4, 4, 5\)"):
        m.dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="expected a 3D array"):
        m.betti_numbers(np.zeros((4, 4)))


def test_cldice_identical_partial_and_leaderboard_edge_cases():
    g = bar()
    assert m.cldice(g, g) == pytest.approx(1.0)
    half = g.copy()
    half[..., 15:] = False
    tprec, tsens = m.cldice_terms(half, g)
    assert tsens == pytest.approx(1.0)  # the half bar's skeleton lies inside the full bar
    assert 0.3 < tprec < 0.7  # the half bar covers about half the full skeleton
    assert m.cldice(half, g) == pytest.approx((2 * tprec * tsens + 1e-6) / (tprec + tsens + 1e-6))
    empty = np.zeros_like(g)
    assert m.cldice(empty, empty) == pytest.approx(1.0)
    # the 2024 formula's quirk, reproduced on purpose: zero overlaps give 1e-6 / 1e-6
    assert m.cldice(empty, g) == pytest.approx(1.0)
    values, notes = lb.score_case(empty, g, lb.EDITIONS["2024"]["tree-like"])
    assert values["cldice"] == pytest.approx(1.0)
    assert any("clDice = 1.0" in n for n in notes)


def test_hd95_hand_values_and_empty_conventions():
    p = np.zeros((10, 10, 10), bool)
    g = np.zeros((10, 10, 10), bool)
    p[5, 5, 5] = True
    g[8, 5, 5] = True
    assert m.hd95(p, g) == pytest.approx(3.0)
    assert m.hd95(p, g, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert m.hd95(ball(), ball()) == 0.0
    empty = np.zeros_like(g)
    assert m.hd95(empty, empty) == 0.0
    assert m.hd95(empty, g) == pytest.approx(math.sqrt(300))  # image diagonal penalty, not 0
    values, notes = lb.score_case(empty, g, lb.EDITIONS["2025"]["contiguous"])
    assert values["hd95"] == pytest.approx(math.sqrt(300))
    assert any("HD95" in n and "empty prediction" in n for n in notes)


def cube(shape, start, size=4) -> np.ndarray:
    a = np.zeros(shape, bool)
    a[start[0] : start[0] + size, start[1] : start[1] + size, start[2] : start[2] + size] = True
    return a


def test_panoptic_quality_hand_values():
    """2026 PQ is panoptica's pq_dsc: SQ = mean Dice of the pairs matched at IoU >= 0.3."""
    shape = (16, 16, 16)
    g = two_blobs(shape)
    assert m.panoptic_quality(g, g) == pytest.approx(1.0)
    one = g.copy()
    one[10:14, 10:14, 10:14] = False
    assert m.panoptic_quality(one, g) == pytest.approx(2 / 3)  # SQ 1, RQ 1 / (1 + 0.5)
    ref = cube(shape, (4, 4, 4))
    # shifted by 2: IoU 32/96 = 1/3 >= 0.3, matched; Dice 64/128: PQ = SQ * RQ = 1/2 * 1 (IoU-based SQ: 1/3)
    assert m.panoptic_quality(cube(shape, (4, 4, 6)), ref) == pytest.approx(0.5, abs=1e-9)
    # shifted by 3: IoU 16/112 < 0.3, unmatched: one FP and one FN
    assert m.panoptic_quality(cube(shape, (4, 4, 7)), ref) == pytest.approx(0.0)
    # instances are 26-connected components: corner-touching cubes are ONE instance
    c = corner_touching()
    assert m.panoptic_quality(c, c) == pytest.approx(1.0)
    left = c.copy()
    left[3:5, 3:5, 3:5] = False  # the first cube alone: IoU 8/16 with the single instance, Dice 16/24
    assert m.panoptic_quality(left, c) == pytest.approx(2 / 3, abs=1e-9)


def test_panoptic_quality_corner_against_edge_touching_cubes_is_half():
    """The issue's example: two 3^3 cubes touching at a corner vs. at an edge, one instance each.

    Shared: the first cube, 27 of 54 voxels each. IoU 27/81 = 1/3 >= 0.3 matches them; Dice
    54/108 = 1/2, so pq_dsc = 1/2 (an IoU-based SQ would give 1/3).
    """
    ref = np.zeros((12, 12, 12), bool)
    ref[1:4, 1:4, 1:4] = ref[4:7, 4:7, 4:7] = True  # corner-touching
    pred = np.zeros_like(ref)
    pred[1:4, 1:4, 1:4] = pred[4:7, 4:7, 1:4] = True  # edge-touching
    assert m.panoptic_quality(pred, ref) == pytest.approx(0.5, abs=1e-9)


def test_panoptic_quality_threshold_is_iou_at_least_0_3_and_empty_cases():
    ref = np.zeros((4, 4, 16), bool)
    ref[1, 1, 2:12] = True  # a 10-voxel line
    pred = np.zeros_like(ref)
    pred[1, 1, 2:5] = True  # 3 of its voxels: IoU exactly 3/10 matches, Dice 6/13
    assert m.panoptic_quality(pred, ref) == pytest.approx(6 / 13, abs=1e-9)
    pred[1, 1, 4] = False  # 2 voxels: IoU 0.2, unmatched
    assert m.panoptic_quality(pred, ref) == 0.0
    empty = np.zeros_like(ref)
    assert math.isnan(m.panoptic_quality(empty, empty))  # both empty: NaN, as panoptica and the leaderboard
    assert m.panoptic_quality(empty, ref) == 0.0
    assert m.panoptic_quality(ref, empty) == 0.0


def test_centerline_dice_2026_hand_values_and_nan_edge_cases():
    line = np.zeros((5, 5, 16), bool)
    line[2, 2, 2:12] = True  # its skeleton is itself
    assert m.centerline_dice(line, line) == 1.0
    half = np.zeros_like(line)
    half[2, 2, 2:7] = True
    # tprec = |P ∩ S(G)| / |S(G)| = 5/10, tsens = |G ∩ S(P)| / |S(P)| = 5/5: 2 * 0.5 / 1.5, no 1e-6 term
    assert m.centerline_dice(half, line) == pytest.approx(2 / 3, abs=1e-12)
    empty = np.zeros_like(line)
    assert math.isnan(m.centerline_dice(empty, empty))
    assert math.isnan(m.centerline_dice(empty, line))  # an empty skeleton
    assert math.isnan(m.centerline_dice(line, empty))
    far = np.zeros_like(line)
    far[0, 0, 2:12] = True
    assert math.isnan(m.centerline_dice(far, line))  # disjoint: both overlaps 0
    even = np.zeros((8, 8, 8), bool)
    even[3:5, 3:5, 3:5] = True  # a 2^3 cube: its skeleton vanishes
    assert not m.skeleton(even).any() and math.isnan(m.centerline_dice(even, even))
    assert m.cldice(empty, empty) == pytest.approx(1.0)  # the 2024 formula keeps its smoothing


def test_centerline_dice_agrees_with_panoptica_case_by_case():
    """Our 2026 clDice against the function the organisers call, NaN where theirs is NaN."""
    import warnings

    from panoptica.metrics.cldice import _compute_centerline_dice_coefficient

    rng = np.random.default_rng(3)
    shapes = [ball(), hollow_shell(), torus(), two_blobs(), corner_touching(), bar(), np.zeros((8, 8, 8), bool)]
    pairs = [(a, a) for a in shapes] + [(torus(), ball()), (bar(), np.roll(bar(), 2, axis=2)),
                                       (ball(), np.zeros((30, 30, 30), bool))]
    for _ in range(6):
        noisy = rng.random((20, 20, 20)) > 0.6
        pairs.append((noisy, np.roll(noisy, 1, axis=0) | (rng.random((20, 20, 20)) > 0.9)))
    for pred, ref in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # theirs divides 0 by 0
            theirs = float(_compute_centerline_dice_coefficient(reference=ref.astype(np.uint8),
                                                                prediction=pred.astype(np.uint8)))
        ours = m.centerline_dice(pred, ref)
        assert (math.isnan(theirs) and math.isnan(ours)) or abs(theirs - ours) <= 1e-9, (theirs, ours)


# ---------------------------------------------------------------------------------------------
# editions, categories, aggregation, ranking


@pytest.mark.parametrize(
    "edition, case, category",
    [
        ("2024", "cfos_007", "dot-like"),
        ("2024", "cFos-Active_Neurons_patchvolume_001", "dot-like"),
        ("2024", "microglia_003", "tree-like"),
        ("2025", "AD_plaques_patchvolume_023", "isolated"),
        ("2025", "shannel_cells_patchvolume_002", "isolated"),
        ("2025", "blood_vessel_patchvolume_019", "contiguous"),
        ("2025", "microglia_patchvolume_004", "contiguous"),
        ("2026", "VessAP_vessel_patchvolume_001", "contiguous"),
        ("2026", "cFos_patchvolume_004", "isolated"),
        # the organisers' ten 2026 prefixes; microglia is isolated in 2026
        ("2026", "microglia_patchvolume_004", "isolated"),
        ("2026", "AD_plaques_patchvolume_023", "isolated"),
        ("2026", "cell_nuclei_patchvolume_001", "isolated"),
        ("2026", "cfos_neuron_patchvolume_002", "isolated"),
        ("2026", "protein_patchvolume_003", "isolated"),
        ("2026", "axonalmarker_patchvolume_001", "contiguous"),
        ("2026", "blood_vessel_patchvolume_019", "contiguous"),
        ("2026", "gutnerve_patchvolume_005", "contiguous"),
        ("2026", "lymphatic_vessel_patchvolume_006", "contiguous"),
        ("2026", "peripheral_nerve_patchvolume_007", "contiguous"),
    ],
)
def test_case_category_from_name(edition, case, category):
    assert lb.case_category(case, edition).name == category


def test_case_category_unknown_name_and_forced():
    with pytest.raises(ValueError, match="patchvolume_001.*--category"):
        lb.case_category("patchvolume_001", "2025")
    assert lb.case_category("patchvolume_001", "2024", forced="contiguous").name == "tree-like"
    assert lb.case_category("cfos_001", "2025", forced="tree-like").name == "contiguous"
    with pytest.raises(ValueError, match="edition '2023'"):
        lb.case_category("cfos_001", "2023")


def test_aggregate_uses_leaderboard_names_and_means():
    cases = {
        "cfos_1": {"category": "dot-like", "dice": 1.0, "betti_error_0": 2.0},
        "cfos_2": {"category": "dot-like", "dice": 0.5, "betti_error_0": 0.0},
        "microglia_1": {"category": "tree-like", "dice": 0.7, "betti_error_0": 1.0, "betti_error_1": 3.0,
                        "cldice": 0.9},
    }
    aggregates, n_cases = lb.aggregate(cases, "2024")
    assert aggregates == {"cfos_dice": 0.75, "cfos_betti_error_0": 1.0, "micro_dice": 0.7,
                          "micro_betti_error_0": 1.0, "micro_betti_error_1": 3.0, "micro_cldice": 0.9}
    assert n_cases == {"dot-like": 2, "tree-like": 1}
    only_dots, _ = lb.aggregate({k: v for k, v in cases.items() if k.startswith("cfos")}, "2024")
    assert set(only_dots) == {"cfos_dice", "cfos_betti_error_0"}  # no micro_* reported as 0


def test_rank_teams_directions_ties_and_category_means():
    teams = {
        "A": {"cfos_dice": 0.9, "cfos_betti_error_0": 5.0},
        "B": {"cfos_dice": 0.8, "cfos_betti_error_0": 1.0},
        "C": {"cfos_dice": 0.8, "cfos_betti_error_0": 3.0},
    }
    r = lb.rank_teams(teams, "2024")
    # dice descending with a tie (B, C share 2.5); Betti error ascending
    assert r["teams"]["A"]["metric_ranks"] == {"cfos_dice": 1.0, "cfos_betti_error_0": 3.0}
    assert r["teams"]["B"]["metric_ranks"] == {"cfos_dice": 2.5, "cfos_betti_error_0": 1.0}
    assert r["teams"]["C"]["metric_ranks"] == {"cfos_dice": 2.5, "cfos_betti_error_0": 2.0}
    assert r["teams"]["B"]["score"] == pytest.approx(1.75)
    assert r["order"] == ["B", "A", "C"]
    assert r["teams"]["B"]["rank"] == 1.0
    # two categories: the final score is the mean of the category mean ranks
    two = {
        "A": {"isolated_dice": 0.9, "isolated_betti_error_0": 1.0, "contiguous_dice": 0.1,
              "contiguous_betti_error_0": 1.0, "contiguous_betti_error_1": 1.0, "contiguous_cldice": 0.1,
              "contiguous_hd95": 9.0},
        "B": {"isolated_dice": 0.1, "isolated_betti_error_0": 2.0, "contiguous_dice": 0.9,
              "contiguous_betti_error_0": 0.0, "contiguous_betti_error_1": 0.0, "contiguous_cldice": 0.2,
              "contiguous_hd95": 1.0},
    }
    r = lb.rank_teams(two, "2025")
    assert r["teams"]["A"]["category_scores"] == {"isolated": 1.0, "contiguous": 2.0}
    assert r["teams"]["A"]["score"] == r["teams"]["B"]["score"] == 1.5
    assert r["teams"]["A"]["rank"] == r["teams"]["B"]["rank"] == 1.5
    with pytest.raises(ValueError, match="same cases"):
        lb.rank_teams({"A": {"cfos_dice": 1.0}, "B": {"micro_dice": 1.0}}, "2024")


# ---------------------------------------------------------------------------------------------
# folders and commands


def write_seg_like_nnunet(path: Path, seg: np.ndarray) -> None:
    """Write a prediction with nnU-Net's own writer, as nnUNetv2_predict does."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    props = {"sitk_stuff": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                            "direction": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)}, "spacing": [1.0, 1.0, 1.0]}
    SimpleITKIO().write_seg(seg.astype(np.uint8), str(path), props)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("selma_eval")
    gt, pred, perfect = root / "gt", root / "pred", root / "perfect"
    for d in (gt, pred, perfect):
        d.mkdir()
    shape = (16, 24, 24)
    rng = np.random.default_rng(0)
    dots = np.zeros(shape, bool)
    for c in rng.integers(3, 20, size=(6, 3)):
        dots[min(c[0], 12) - 2 : min(c[0], 12) + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = True
    tree = np.zeros(shape, bool)
    tree[8, 4:20, 10:12] = True
    tree[8, 10:12, 4:20] = True
    refs = {"cfos_001": dots, "cfos_002": two_blobs(shape), "microglia_001": tree}
    write_image(gt / "cfos_001.nii.gz", (dots * 255).astype(np.uint8))  # {0,255}-encoded reference
    write_image(gt / "cfos_002.mha", refs["cfos_002"].astype(np.uint8))
    write_image(gt / "microglia_001.tif", tree.astype(np.uint8))
    for case, ref in refs.items():
        write_seg_like_nnunet(perfect / f"{case}.nii.gz", ref)
    write_seg_like_nnunet(pred / "cfos_001.nii.gz", np.roll(dots, 1, axis=2))
    write_seg_like_nnunet(pred / "cfos_002.nii.gz", refs["cfos_002"] & (np.indices(shape)[0] < 8))
    write_image(pred / "microglia_001.nii.gz", (tree * 95).astype(np.uint8))  # non-binary, like some masks
    write_seg_like_nnunet(pred / "cfos_999.nii.gz", dots)  # extra prediction without reference
    for extra in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):  # nnUNetv2_predict leaves these
        (pred / extra).write_text("{}")
    return {"gt": gt, "pred": pred, "perfect": perfect, "root": root, "shape": shape}


def test_evaluate_command_2024_on_nnunet_style_folder(folders, capsys):
    from nnunetv2_selma.cli.evaluate import main

    out = folders["root"] / "result_2024.json"
    main(["-ref", str(folders["gt"]), "-pred", str(folders["pred"]), "--edition", "2024", "-o", str(out),
          "-np", "2", "--no-progress"])
    result = json.loads(out.read_text())
    assert set(result["aggregates"]) == {"cfos_dice", "cfos_betti_error_0", "micro_dice", "micro_betti_error_0",
                                         "micro_betti_error_1", "micro_cldice"}
    assert set(result["cases"]) == {"cfos_001", "cfos_002", "microglia_001"}
    micro = result["cases"]["microglia_001"]
    assert micro["dice"] == pytest.approx(1.0)  # 95 binarised to foreground
    assert micro["betti_error_0"] == 0 and micro["cldice"] == pytest.approx(1.0)
    cfos2 = result["cases"]["cfos_002"]  # one of two blobs kept
    assert cfos2["dice"] == pytest.approx(2 * 64 / (64 + 128)) and cfos2["betti_error_0"] == 1
    assert result["aggregates"]["cfos_dice"] == pytest.approx(
        (result["cases"]["cfos_001"]["dice"] + cfos2["dice"]) / 2)
    warnings = "\n".join(result["warnings"])
    assert "case cfos_999" in warnings and "no reference" in warnings
    assert "case microglia_001: prediction microglia_001.nii.gz holds uint8 values 0..95" in warnings
    assert "case cfos_001: reference cfos_001.nii.gz" in warnings  # the {0,255} reference was remapped
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["cfos_001", "cfos_002", "microglia_001"]
    assert float(rows[1]["dice"]) == pytest.approx(cfos2["dice"]) and rows[0]["cldice"] == ""
    assert "cfos_dice" in capsys.readouterr().out


@pytest.mark.parametrize("edition, keys", [
    ("2025", {"isolated_dice", "isolated_betti_error_0", "contiguous_dice", "contiguous_betti_error_0",
              "contiguous_betti_error_1", "contiguous_cldice", "contiguous_hd95"}),
    # 2026: microglia is isolated, so every case of this folder is; mean and std per metric
    ("2026", {"iso_dice_mean", "iso_dice_std", "iso_panoptic_quality_mean", "iso_panoptic_quality_std"}),
])
def test_later_editions_on_perfect_predictions(folders, edition, keys):
    from nnunetv2_selma.evaluation.folders import evaluate_folders

    result = evaluate_folders(folders["gt"], folders["perfect"], edition, None, num_processes=1, progress=False)
    assert set(result["aggregates"]) == keys
    for key, value in result["aggregates"].items():
        best = 0.0 if ("error" in key or "hd95" in key or key.endswith("_std")) else 1.0
        assert value == pytest.approx(best), key


def test_forced_category(folders):
    from nnunetv2_selma.evaluation.folders import evaluate_folders

    result = evaluate_folders(folders["gt"], folders["perfect"], "2026", None, category="isolated",
                              num_processes=1, progress=False)
    assert result["n_cases"] == {"isolated": 3, "contiguous": 0}
    assert set(result["aggregates"]) == {"iso_dice_mean", "iso_dice_std", "iso_panoptic_quality_mean",
                                         "iso_panoptic_quality_std"}


def test_missing_prediction_is_an_error_or_an_empty_prediction_with_warning(folders, tmp_path):
    from nnunetv2_selma.evaluation.folders import evaluate_folders

    pred = tmp_path / "pred"
    shutil.copytree(folders["perfect"], pred)
    (pred / "cfos_002.nii.gz").unlink()
    with pytest.raises(ValueError, match="no prediction for 1 of 3 reference cases: cfos_002"):
        evaluate_folders(folders["gt"], pred, "2024", None, num_processes=1, progress=False)
    result = evaluate_folders(folders["gt"], pred, "2024", None, allow_missing=True, num_processes=1, progress=False)
    assert result["cases"]["cfos_002"]["dice"] == 0.0
    assert result["cases"]["cfos_002"]["betti_error_0"] == 2
    assert any("case cfos_002: prediction missing" in w for w in result["warnings"])


def test_shape_mismatch_and_unreadable_files_name_the_case(folders, tmp_path):
    from nnunetv2_selma.evaluation.folders import evaluate_folders

    pred = tmp_path / "pred"
    shutil.copytree(folders["perfect"], pred)
    write_image(pred / "cfos_001.nii.gz", np.zeros((4, 4, 4), np.uint8))
    (pred / "microglia_001.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError) as info:
        evaluate_folders(folders["gt"], pred, "2024", None, num_processes=2, progress=False)
    message = str(info.value)
    assert "2 case(s) could not be scored" in message
    assert "case cfos_001:" in message and "(4, 4, 4)" in message
    assert "case microglia_001:" in message and "cannot be read" in message


def test_result_files_are_readable_by_others_under_umask_022(folders, tmp_path):
    import os

    from nnunetv2_selma.evaluation.folders import evaluate_folders

    old = os.umask(0o022)
    try:
        evaluate_folders(folders["gt"], folders["perfect"], "2024", tmp_path / "r.json", num_processes=1,
                         progress=False)
    finally:
        os.umask(old)
    for name in ("r.json", "r.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_nan_prediction_or_reference_is_refused_by_name(folders, tmp_path):
    from nnunetv2_selma.evaluation.folders import evaluate_folders

    pred = tmp_path / "pred"
    shutil.copytree(folders["perfect"], pred)
    (pred / "cfos_002.nii.gz").unlink()  # NIfTI reads NaN back as 0; MetaImage and TIFF keep it
    write_image(pred / "cfos_002.mha", np.full(folders["shape"], np.nan, np.float32))  # NaN > 0 is False
    with pytest.raises(ValueError, match=r"case cfos_002: prediction .*cfos_002.mha: holds \d+ NaN/infinite"):
        evaluate_folders(folders["gt"], pred, "2024", None, num_processes=1, progress=False)
    gt = tmp_path / "gt"
    shutil.copytree(folders["gt"], gt)
    inf = np.zeros(folders["shape"], np.float32)
    inf[0, 0, 0] = np.inf
    write_image(gt / "cfos_002.mha", inf)
    with pytest.raises(ValueError, match=r"case cfos_002: reference .*cfos_002.mha: holds 1 NaN/infinite"):
        evaluate_folders(gt, folders["perfect"], "2024", None, num_processes=1, progress=False)
    nan = np.zeros((2, 2, 2))
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="prediction: holds 1 NaN"):
        m.dice(nan, np.zeros((2, 2, 2), bool))


def test_duplicate_case_files_and_unknown_names_fail(folders, tmp_path):
    from nnunetv2_selma.evaluation.folders import evaluate_folders, list_cases

    pred = tmp_path / "pred"
    shutil.copytree(folders["perfect"], pred)
    shutil.copy(pred / "cfos_001.nii.gz", pred / "cfos_001.mha")  # nnU-Net would never do this
    with pytest.raises(ValueError, match="cfos_001.*two files"):
        list_cases(pred)
    gt = tmp_path / "gt"
    gt.mkdir()
    write_image(gt / "patchvolume_001.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="patchvolume_001"):
        evaluate_folders(gt, gt, "2025", None, num_processes=1, progress=False)


def test_rank_command_orders_perfect_first(folders, capsys):
    from nnunetv2_selma.cli.evaluate import rank_main

    out = folders["root"] / "ranking.json"
    rank_main(["-ref", str(folders["gt"]), "-pred", str(folders["pred"]), str(folders["perfect"]),
               "--edition", "2024", "-o", str(out), "-np", "1", "--no-progress"])
    ranking = json.loads(out.read_text())
    assert ranking["order"] == ["perfect", "pred"]
    assert ranking["teams"]["perfect"]["rank"] == 1.0
    assert (folders["root"] / "ranking.perfect.json").is_file()
    assert out.with_suffix(".csv").read_text().splitlines()[1].startswith("perfect,1.0")
    # result JSONs from the evaluate command rank the same way, without rescoring
    again = folders["root"] / "ranking_again.json"
    rank_main(["-pred", str(folders["root"] / "ranking.pred.json"), str(folders["root"] / "ranking.perfect.json"),
               "--names", "pred", "perfect", "--edition", "2024", "-o", str(again)])
    assert json.loads(again.read_text())["order"] == ["perfect", "pred"]
    assert "perfect" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# 2026: the organisers' aggregates (mean and sample std, NaN-aware) and the four-subgroup ranking


def test_aggregate_2026_mean_and_sample_std_over_finite_values():
    cases = {
        "cfos_neuron_a": {"category": "isolated", "dice": 1.0, "panoptic_quality": 1.0},
        "cfos_neuron_b": {"category": "isolated", "dice": 0.5, "panoptic_quality": float("nan")},
        "AD_plaques_c": {"category": "isolated", "dice": 0.0, "panoptic_quality": 0.0},
        "gutnerve_d": {"category": "contiguous", "dice": 0.8, "cldice": 0.6},
    }
    agg, n_cases = lb.aggregate(cases, "2026")
    assert n_cases == {"isolated": 3, "contiguous": 1}
    assert agg["iso_dice_mean"] == pytest.approx(0.5, abs=1e-12)
    assert agg["iso_dice_std"] == pytest.approx(0.5, abs=1e-12)  # sqrt((0.25 + 0 + 0.25) / (3 - 1))
    assert agg["iso_panoptic_quality_mean"] == pytest.approx(0.5, abs=1e-12)  # the NaN case left out
    assert agg["iso_panoptic_quality_std"] == pytest.approx(math.sqrt(0.5), abs=1e-12)  # over 1.0 and 0.0
    assert agg["con_dice_mean"] == pytest.approx(0.8) and math.isnan(agg["con_dice_std"])  # one value
    assert agg["con_cldice_mean"] == pytest.approx(0.6) and math.isnan(agg["con_cldice_std"])
    warnings = "\n".join(lb.aggregate_warnings(cases, "2026"))
    assert "iso_panoptic_quality: 1 of 3 case(s) are NaN (cfos_neuron_b)" in warnings
    assert "con_dice_std: fewer than two finite values" in warnings
    assert lb.aggregate_warnings(cases | {"cfos_x": {"category": "dot-like", "dice": 1.0}}, "2024") == []
    sub = lb.subgroup_aggregate(cases, "2026")
    assert sub["dense_iso_dice_mean"] == pytest.approx(0.75) and sub["sparse_iso_dice_mean"] == 0.0
    assert sub["dense_iso_panoptic_quality_mean"] == 1.0 and sub["sparse_con_cldice_mean"] == pytest.approx(0.6)


def test_rank_teams_2026_four_subgroups_then_structure_types():
    def team(di, si, dc, sc):  # one value per subgroup, used for both of its metrics
        out = {}
        for sub, v in (("dense_iso", di), ("sparse_iso", si), ("dense_con", dc), ("sparse_con", sc)):
            second = "panoptic_quality" if sub.endswith("iso") else "cldice"
            out[f"{sub}_dice_mean"] = out[f"{sub}_{second}_mean"] = v
        return out

    teams = {"A": team(0.9, 0.9, 0.9, 0.1), "B": team(0.1, 0.1, 0.5, 0.9), "C": team(0.5, 0.5, 0.1, 0.5)}
    r = lb.rank_teams(teams, "2026")
    # subgroup mean ranks: A 1, 1, 1, 3; B 3, 3, 2, 1; C 2, 2, 3, 2
    assert r["teams"]["A"]["subgroup_scores"] == {"dense_iso": 1.0, "sparse_iso": 1.0, "dense_con": 1.0,
                                                  "sparse_con": 3.0}
    assert r["teams"]["A"]["category_scores"] == {"isolated": 1.0, "contiguous": 2.0}
    assert r["teams"]["B"]["category_scores"] == {"isolated": 3.0, "contiguous": 1.5}
    assert r["teams"]["A"]["score"] == 1.5 and r["teams"]["B"]["score"] == 2.25 and r["teams"]["C"]["score"] == 2.25
    assert r["order"] == ["A", "B", "C"] and r["teams"]["B"]["rank"] == r["teams"]["C"]["rank"] == 2.5
    # a NaN mean (every case NaN) ranks last instead of poisoning the ranks
    teams["A"]["sparse_con_cldice_mean"] = float("nan")
    teams["B"]["sparse_con_cldice_mean"] = 0.0
    r = lb.rank_teams(teams, "2026")
    assert r["teams"]["A"]["metric_ranks"]["sparse_con_cldice_mean"] == 3.0


def test_evaluate_2026_folder_nan_cases_new_prefixes_and_rank(tmp_path):
    """gutnerve/peripheral_nerve accepted, microglia isolated, NaN per case, warnings, no crash."""
    from nnunetv2_selma.evaluation.folders import evaluate_folders, rank_predictions

    gt, good, bad = tmp_path / "gt", tmp_path / "good", tmp_path / "bad"
    for d in (gt, good, bad):
        d.mkdir()
    shape = (8, 12, 24)
    line = np.zeros(shape, np.uint8)
    line[4, 6, 2:20] = 1
    blobs = two_blobs(shape).astype(np.uint8)
    empty = np.zeros(shape, np.uint8)
    refs = {"gutnerve_patchvolume_001": line, "peripheral_nerve_patchvolume_002": line,
            "microglia_patchvolume_003": blobs, "cfos_neuron_patchvolume_004": empty,
            "AD_plaques_patchvolume_005": blobs}
    for case, ref in refs.items():
        write_image(gt / f"{case}.nii.gz", ref)
        write_image(good / f"{case}.nii.gz", ref)
        write_image(bad / f"{case}.nii.gz", empty)
    result = evaluate_folders(gt, bad, "2026", tmp_path / "bad.json", num_processes=1, progress=False)
    assert result["n_cases"] == {"isolated": 3, "contiguous": 2}
    cases = result["cases"]
    assert math.isnan(cases["cfos_neuron_patchvolume_004"]["panoptic_quality"])  # both empty
    assert cases["cfos_neuron_patchvolume_004"]["dice"] == 1.0
    assert math.isnan(cases["gutnerve_patchvolume_001"]["cldice"])  # empty prediction skeleton
    assert cases["microglia_patchvolume_003"]["panoptic_quality"] == 0.0
    agg = result["aggregates"]
    assert agg["iso_panoptic_quality_mean"] == 0.0 and math.isnan(agg["con_cldice_mean"])
    warnings = "\n".join(result["warnings"])
    assert "case cfos_neuron_patchvolume_004: panoptic quality is NaN" in warnings
    assert "con_cldice: 2 of 2 case(s) are NaN (gutnerve_patchvolume_001, peripheral_nerve_patchvolume_002)" in warnings
    assert set(result["subgroup_aggregates"]) == {
        "dense_iso_dice_mean", "dense_iso_panoptic_quality_mean", "sparse_iso_dice_mean",
        "sparse_iso_panoptic_quality_mean", "sparse_con_dice_mean", "sparse_con_cldice_mean"}
    ranking = rank_predictions([good, tmp_path / "bad.json"], "2026", tmp_path / "rank.json", reference_folder=gt,
                               names=["good", "bad"], num_processes=1, progress=False)
    assert ranking["order"] == ["good", "bad"] and ranking["teams"]["good"]["score"] == 1.0
    assert set(ranking["teams"]["good"]["subgroup_scores"]) == {"dense_iso", "sparse_iso", "sparse_con"}


def test_rank_names_a_missing_prediction(tmp_path, capsys):
    from nnunetv2_selma.cli.evaluate import rank_main

    (tmp_path / "teamA.json").write_text("{}")
    assert rank_main(["-pred", str(tmp_path / "teamA.json"), str(tmp_path / "missing.json"), "--edition", "2026",
                      "-o", str(tmp_path / "rank.json")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'missing.json'}: not found; expected a folder of predicted masks or a result JSON" \
        in err and "is a prediction folder" not in err
    assert not (tmp_path / "rank.json").exists()


def test_rank_2026_says_where_it_prints_the_table_that_nan_cases_are_left_out(tmp_path, capsys):
    """An empty prediction on a hard contiguous case (clDice NaN, left out) ties a half segmentation."""
    from nnunetv2_selma.cli.evaluate import rank_main

    gt, empty, half = tmp_path / "gt", tmp_path / "empty", tmp_path / "half"
    for d in (gt, empty, half):
        d.mkdir()
    line = np.zeros((8, 12, 24), np.uint8)
    line[4, 6, 2:20] = 1
    half_line = line.copy()
    half_line[4, 6, 11:] = 0
    for case in ("gutnerve_001", "gutnerve_002"):
        write_image(gt / f"{case}.nii.gz", line)
    write_image(empty / "gutnerve_001.nii.gz", np.zeros_like(line))
    write_image(half / "gutnerve_001.nii.gz", half_line)
    for d in (empty, half):
        write_image(d / "gutnerve_002.nii.gz", line)
    out = tmp_path / "rank.json"
    assert rank_main(["-ref", str(gt), "-pred", str(empty), str(half), "--edition", "2026", "-o", str(out),
                      "-np", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    ranking = json.loads(out.read_text())
    assert ranking["teams"]["empty"]["rank"] == ranking["teams"]["half"]["rank"]  # the rule's consequence
    assert ranking["left_out"] == {"empty": {"con_cldice": ["gutnerve_001"]}, "half": {}}
    assert "note: 2026 rule (the organisers' evaluate.py): a case whose metric is NaN is left out" in printed
    assert "can tie one that half-segments it" in printed
    assert "  empty: con_cldice leaves out 1 NaN case(s) (gutnerve_001)" in printed
    assert "  half: no NaN case left out" in printed
    assert printed.index("mean rank") < printed.index("note: 2026 rule")
