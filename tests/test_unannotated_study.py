"""The unannotated-benefit study's smoke profile end to end (benchmarks/bench_unannotated_benefit.py): domain
download, convert, ingest, plan, fine-tuning of scratch and the semi-supervised trainer through nnUNetv2_train,
rows for the three tests, paired differences and the gate record. Its numbers are meaningless (2 iterations)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_unannotated_benefit.py"


def _load(script: Path):
    """A benchmarks/ script as a module (registered first: its dataclasses look their module up while it loads)."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_profile_runs_scratch_and_semi(tmp_path):
    out = tmp_path / "results.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--profile", "smoke", "--arms", "scratch", "semi", "--ks", "1",
                          "--work", str(tmp_path / "work"), "-o", str(out)], capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads(out.read_text())
    tests = {(r["arm"], r["test"]) for r in results["rows"]}
    assert tests == {(a, t) for a in ("scratch", "semi") for t in ("seen_domains", "unseen_domains",
                                                                       "unseen_structure")}
    assert {(p["method"], p["test"]) for p in results["paired"]} == {
        ("semi", t) for t in ("seen_domains", "unseen_domains", "unseen_structure")}
    # the labelled pool and both test sets come from the domains the record names
    roles = {c["role"] for c in results["domains"]["cases"]}
    assert roles == {"pool", "seen_domains", "unseen_domains"}
    assert results["complete"] and "holds" in results["gate"]
    assert out.with_suffix(".png").is_file() and "semi − scratch" in out.with_suffix(".md").read_text()
    assert "gain_vs_scratch" in results and "1" in results["domain_gap"]["nuclei"]
    log = (tmp_path / "work" / "logs").glob("finetune__nuclei_k1_semi_seed0.log")
    assert "semi-supervised: store" in next(log).read_text()
    # foreground_calls.py reads the same runs' validation predictions back against their labels
    calls = tmp_path / "calls.json"
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "foreground_calls.py"), "--work", str(tmp_path / "work"),
                          "--structure", "nuclei", "-o", str(calls)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = json.loads(calls.read_text())
    assert {(r["arm"], r["k"]) for r in records} == {("scratch", 1), ("semi", 1)}
    for r in records:
        assert 0 <= r["recall"] <= 1 and 0 <= r["precision"] <= 1 and r["predicted_over_true"] >= 0
        assert len(r["train_cases"]) == 1 and 0 < next(iter(r["train_cases"].values())) < 1
    # calling_signal.py: the blob coverage of the same predictions, label-free, beside the calls it should predict
    signal = tmp_path / "signal.json"
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "calling_signal.py"), "--work", str(tmp_path / "work"),
                          "--structure", "nuclei", "-o", str(signal)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    signals = json.loads(signal.read_text())
    assert [(r["arm"], r["predicted_over_true"]) for r in signals] == [(r["arm"], r["predicted_over_true"])
                                                                     for r in records]
    for r in signals:
        assert all(0 <= r[c] <= 1 for c in ("c_labelled", "c_predicted", "c_true"))
        assert r["signal"] == pytest.approx(r["c_predicted"] / max(r["c_labelled"], 1e-6))

    # share_proxy.py: every annotated patch of the record against its label, one unannotated volume per domain
    proxy = tmp_path / "proxy.json"
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "share_proxy.py"), "--work", str(tmp_path / "work"),
                          "-o", str(proxy)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    proxies = json.loads(proxy.read_text())
    assert [p["case"] for p in proxies["patches"]] == [c["case"] for c in results["domains"]["cases"]]
    assert len(proxies["volumes"]) == len(results["domains"]["domains"])
    assert all(0 < p["share"] < 1 and 0 <= p["z2"] <= 1 for p in proxies["patches"])
    assert set(proxies["spearman"]) == {"otsu", "z2", "z3", "scale"}
    assert all(p["scale"] >= 1.0 for p in proxies["patches"] + proxies["volumes"])

    # --reuse: a second study of the same data counts the first one's scratch runs instead of training them
    again = tmp_path / "again.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--profile", "smoke", "--arms", "scratch", "--ks", "1",
                          "--work", str(tmp_path / "work2"), "-o", str(again), "--reuse", str(out), "scratch",
                          "--collect"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    reused = json.loads(again.read_text())
    assert reused["complete"] and not list((tmp_path / "work2" / "logs").glob("finetune__*"))
    assert sorted((r["test"], r["dice"]) for r in reused["rows"]) == sorted(
        (r["test"], r["dice"]) for r in results["rows"] if r["arm"] == "scratch")

    # --run-ks: every k keeps its place (and subsets), only k = 1 runs now: all reused, k = all left for later
    res = subprocess.run([sys.executable, str(SCRIPT), "--profile", "smoke", "--arms", "scratch", "--ks", "1", "all",
                          "--run-ks", "1", "--run-seeds", "0", "--work", str(tmp_path / "work2"), "-o", str(again),
                          "--reuse", str(out), "scratch"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    partial = json.loads(again.read_text())
    assert not partial["complete"] and partial["runs_done"] == 1
    assert not list((tmp_path / "work2" / "logs").glob("finetune__*"))

    # another schedule is another study: its runs are refused with the field that differs
    res = subprocess.run([sys.executable, str(SCRIPT), "--profile", "cpu", "--arms", "scratch", "--ks", "1",
                          "--structures", "nuclei", "--work", str(tmp_path / "work3"), "--reuse", str(out), "scratch",
                          "--collect"], capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "profile field" in res.stderr


def test_gain_vs_scratch_finds_an_arm_that_levels_the_seeds(tmp_path):
    bench = _load(SCRIPT)
    scratch = {0: 0.64, 1: 0.38, 2: 0.59}
    rows = [{"trained_on": "nuclei", "test": "unseen_domains", "k": k, "arm": arm, "seed": s, "dice": d}
            for k in (2, "all") for s, base in scratch.items()
            for arm, d in (("scratch", base), ("level", 0.60), ("plus", base + 0.02))]
    rows.append({"trained_on": "nuclei", "test": "unseen_domains", "k": 2, "arm": "short", "seed": 0, "dice": 0.7})
    got = {g["method"]: g for g in bench.gain_vs_scratch(rows)}
    # k = all and arms with fewer than three paired seeds are left out
    assert set(got) == {"level", "plus"} and {g["k"] for g in got.values()} == {"2"}
    # an arm at 0.60 whatever scratch reached: difference falls one for one with scratch's Dice
    assert abs(got["level"]["slope"] + 1) < 1e-9 and abs(got["level"]["r"] + 1) < 1e-9
    assert got["level"]["scratch_worst"] == 0.38 and got["level"]["arm_worst"] == 0.60
    # a constant gain: slope 0, and no correlation to report (the differences do not vary)
    assert abs(got["plus"]["slope"]) < 1e-9 and got["plus"]["r"] is None
    bench.plot_gain(list(got.values()), tmp_path / "gain.png")
    assert (tmp_path / "gain.png").stat().st_size > 10_000


def test_bright_fractions_count_a_bright_cube_over_a_noisy_background():
    proxy = _load(SCRIPT.parent / "share_proxy.py")
    rng = np.random.default_rng(0)
    x = rng.normal(100, 2, (40, 40, 40))
    x[:20, :20, :16] += 100  # 10% of the voxels
    f = proxy.bright_fractions(x)
    assert abs(f["otsu"] - 0.1) < 0.005 and abs(f["z3"] - 0.1) < 0.01 and f["z2"] > f["z3"]
    assert proxy.bright_fractions(rng.normal(100, 2, (20, 20, 20)))["z3"] < 0.01  # noise alone: almost nothing


def test_every_arm_has_its_trainer_at_the_cpu_schedule():
    bench = _load(SCRIPT)
    from nnunetv2_selma.training import study_variants, trainers

    schedule = bench.PROFILES["cpu"].trainer[len(bench.BASE_TRAINER):]
    for name, arm in bench.ARMS.items():
        cls = getattr(study_variants, arm.trainer + schedule, None) or getattr(trainers, arm.trainer + schedule, None)
        assert cls is not None, f"arm {name}: no {arm.trainer + schedule}"
    # the stated-share diagnostics bracket the oracle's share by a factor two
    shares = {a: getattr(study_variants, bench.ARMS[a].trainer).semi_align
              for a in ("semi_pl_style_copies_aligned_half", "semi_pl_style_copies_aligned_oracle",
                        "semi_pl_style_copies_aligned_double")}
    assert list(shares.values()) == [0.053, 0.106, 0.212]


def test_another_domain_seed_draws_another_benchmark(tmp_path):
    bench = _load(SCRIPT)
    records, files = {}, {}
    for seed in (0, 1):
        prof = replace(bench.PROFILES["smoke"], domain_seed=seed)
        study = bench.DomainStudy(prof, tmp_path / f"work{seed}", ("scratch",), 1)
        (tmp_path / f"work{seed}").mkdir(exist_ok=True)
        study.write_data(tmp_path / f"work{seed}" / "download")
        download = tmp_path / f"work{seed}" / "download"
        records[seed] = json.loads((download / "domains.json").read_text())
        files[seed] = {f.relative_to(download): f.read_bytes() for f in sorted(download.rglob("*.nii.gz"))}
    # the same cases and roles, other domains and other scenes (every patch's bytes differ)
    assert records[0]["cases"] == records[1]["cases"]
    assert records[0]["domains"] != records[1]["domains"]
    assert files[0].keys() == files[1].keys() and files[0]
    assert all(files[0][f] != files[1][f] for f in files[0])


def test_a_domain_shift_draws_the_new_labs_from_the_other_half(tmp_path):
    from nnunetv2_selma.synthetic.domains import draw_domains

    bench = _load(SCRIPT)
    prof = replace(bench.PROFILES["smoke"], domain_shift=True)
    study = bench.DomainStudy(prof, tmp_path, ("scratch",), 1)
    study.write_data(tmp_path / "download")
    record = json.loads((tmp_path / "download" / "domains.json").read_text())
    shifted = draw_domains(prof.n_domains, 0, shift_from=prof.labelled_domains)
    assert record["domains"] == [d.to_dict() for d in shifted] != [d.to_dict() for d in draw_domains(prof.n_domains)]
    # a results file of the unshifted benchmark is not counted as runs of the shifted one
    earlier = tmp_path / "plain.json"
    earlier.write_text(json.dumps({"profile": {k: v for k, v in bench.asdict(bench.PROFILES["smoke"]).items()
                                               if k != "domain_shift"}}))
    with pytest.raises(SystemExit, match="domain_shift"):
        bench.check_reusable(prof, earlier)
    assert bench.check_reusable(bench.PROFILES["smoke"], earlier)


def test_domain_gap_pairs_each_scratch_model_on_both_test_sets():
    bench = _load(SCRIPT)

    def row(test, k, seed, dice, arm="scratch"):
        return {"trained_on": "cfos", "test": test, "k": k, "seed": seed, "dice": dice, "arm": arm}

    rows = [row("seen_domains", 1, 0, 0.6), row("unseen_domains", 1, 0, 0.4), row("seen_domains", 1, 1, 0.5),
            row("unseen_domains", 1, 1, 0.5), row("seen_domains", "all", 0, 0.7), row("unseen_domains", 1, 2, 0.1),
            row("seen_domains", 1, 0, 0.0, arm="semi"), row("unseen_structure", 1, 0, 0.0)]
    gap = bench.domain_gap(rows)
    # seed 2 (no seen score) and k = all (no unseen score) have no pair; other arms and tests are not counted
    assert gap == {"cfos": {"1": {"mean": pytest.approx(0.1), "per_seed": {"0": pytest.approx(0.2), "1": 0.0}}}}


def test_pooled_draws_pair_each_draw_and_seed_and_refuse_another_study(tmp_path):
    pool = _load(SCRIPT.with_name("pool_draws.py"))
    bench = sys.modules["bench_unannotated_benefit"]
    profile = {**bench.asdict(bench.PROFILES["smoke"]), "domain_shift": True}

    def results(draw, diffs, **changed):
        rows = []
        for seed, diff in enumerate(diffs):
            for arm, dice in (("scratch", 0.3), ("semi", 0.3 + diff)):
                rows.append({"structure": "cfos", "test": "unseen_domains", "k": 2, "arm": arm, "seed": seed,
                             "dice": dice, "per_case_dice": {"a": dice, "b": dice}})
            rows.append({**rows[-1], "test": "seen_domains", "per_case_dice": {"a": 0.0}})  # another test: left out
        path = tmp_path / f"d{draw}.json"
        path.write_text(json.dumps({"profile": {**profile, "domain_seed": draw, **changed}, "rows": rows}))
        return path

    out = pool.pool([results(1, [0.1, 0.2]), results(2, [0.0, 0.1, 0.2])], "semi")
    (cfos,) = out["pooled"]
    assert cfos["n_seeds"] == 5 and set(cfos["per_seed_diff"]) == {"d1s0", "d1s1", "d2s0", "d2s1", "d2s2"}
    assert cfos["mean_diff"] == pytest.approx(0.12)
    assert cfos["per_draw_mean"] == {"d1": pytest.approx(0.15), "d2": pytest.approx(0.1)}
    assert cfos["meets_target"]
    pool.plot(out, tmp_path / "pooled.png")
    assert (tmp_path / "pooled.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="domain_shift"):
        pool.pool([results(1, [0.1]), results(3, [0.1], domain_shift=False)], "semi")
    with pytest.raises(SystemExit, match="draw 1"):
        pool.pool([results(1, [0.1]), results(1, [0.2])], "semi")
