"""The unannotated-benefit study's smoke profile end to end (benchmarks/bench_unannotated_benefit.py): domain
download, convert, ingest, plan, fine-tuning of scratch and the semi-supervised trainer through nnUNetv2_train,
rows for the three tests, paired differences and the gate record. Its numbers are meaningless (2 iterations)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_unannotated_benefit.py"


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
    log = (tmp_path / "work" / "logs").glob("finetune__nuclei_k1_semi_seed0.log")
    assert "semi-supervised: store" in next(log).read_text()

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
