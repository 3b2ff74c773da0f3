"""Pool one arm's paired difference with scratch over several draws of the unannotated-benefit study.

Each results file of ``bench_unannotated_benefit.py`` is one draw of the generated data (``--domain-seed``); its
seeds are paired with scratch on that draw's labelled subsets and test patches. Pooled, every (draw, seed) is one
repeat of the two-level bootstrap (repeats, then test cases), so the interval covers training seeds and the
draws' differences alike. The files must be the same study apart from the draw: every field of the study's
``SAME_DATA`` but ``domain_seed`` equal, and each draw once.

    python benchmarks/pool_draws.py benchmarks/results/unannotated_benefit_shift_d1_cpu.json \\
        benchmarks/results/unannotated_benefit_shift_d2_cpu.json --arm semi_pl_style_copies --k 2 \\
        -o benchmarks/results/unannotated_benefit_shift_pooled_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ssl_benefit as ssl  # noqa: E402
from bench_unannotated_benefit import DEFAULTS, SAME_DATA  # noqa: E402


def draw_of(results: dict, name: str, reference: dict | None) -> int:
    """The file's draw (its ``domain_seed``), refused unless its profile matches ``reference`` apart from the draw."""
    prof = results["profile"]
    if reference is not None:
        for field in SAME_DATA:
            if field == "domain_seed":
                continue
            here, there = prof.get(field, DEFAULTS.get(field)), reference.get(field, DEFAULTS.get(field))
            if json.dumps(here) != json.dumps(there):
                raise SystemExit(f"{name}: profile field {field} is {here!r}, the first file's is {there!r}; "
                                 "only draws of one study can be pooled")
    return int(prof.get("domain_seed", DEFAULTS["domain_seed"]))


def pooled_rows(files: list[Path], arm: str, k: str, test: str) -> list[dict]:
    """The rows of ``arm`` and scratch at label count ``k`` on ``test``, each seed renamed ``d<draw>s<seed>``."""
    rows, reference, draws = [], None, {}
    for path in files:
        results = json.loads(path.read_text())
        draw = draw_of(results, path.name, reference)
        if draw in draws:
            raise SystemExit(f"{path.name}: draw {draw} is also {draws[draw]}; each draw counts once")
        draws[draw], reference = path.name, reference or results["profile"]
        for r in results["rows"]:
            if r["arm"] in (arm, "scratch") and ssl.k_label(r["k"]) == k and r["test"] == test:
                rows.append({**r, "seed": f"d{draw}s{r['seed']}"})
    return rows


def pool(files: list[Path], arm: str, k: str = "2", test: str = "unseen_domains") -> dict:
    """Per structure, ``arm`` - scratch over every (draw, seed) the files hold for both, and per draw alone."""
    rows = pooled_rows(files, arm, k, test)
    pooled = [p for p in ssl.paired_differences(rows) if p["method"] == arm]
    per_draw = {}
    for p in pooled:
        by_draw: dict[str, list[float]] = {}
        for repeat, d in p["per_seed_diff"].items():
            by_draw.setdefault(repeat.split("s")[0], []).append(d)
        per_draw[p["structure"]] = {draw: sum(v) / len(v) for draw, v in sorted(by_draw.items())}
    return {"arm": arm, "k": k, "test": test, "files": [f.name for f in files],
            "pooled": [{**p, "per_draw_mean": per_draw[p["structure"]],
                        "meets_target": p["mean_diff"] >= 0.05 and p["ci_low"] > 0} for p in pooled]}


def plot(out: dict, path: Path) -> None:
    """Each (draw, seed)'s difference with scratch, one column per draw, the pooled mean and CI beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(out["pooled"]), figsize=(4.2 * len(out["pooled"]), 4), squeeze=False)
    for ax, p in zip(axes[0], out["pooled"]):
        draws = list(p["per_draw_mean"])
        for i, draw in enumerate(draws):
            diffs = [d for r, d in p["per_seed_diff"].items() if r.split("s")[0] == draw]
            ax.plot([i] * len(diffs), diffs, "o", alpha=0.7)
            ax.plot([i - 0.2, i + 0.2], [p["per_draw_mean"][draw]] * 2, "k-")
        n = len(draws)
        ax.errorbar([n], [p["mean_diff"]], yerr=[[p["mean_diff"] - p["ci_low"]], [p["ci_high"] - p["mean_diff"]]],
                    fmt="s", color="k", capsize=4)
        ax.set_xticks(range(n + 1), [*draws, "pooled"])
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(0.05, color="tab:red", lw=0.8, ls="--")
        ax.set_ylabel(f"{out['arm']} - scratch (Dice)")
        ax.set_title(f"{p['structure']}, k = {out['k']}, {out['test']}")
        ax.grid(alpha=0.3)
    fig.suptitle("paired difference per draw and seed; pooled mean with its 95% CI; dashed: the +0.05 target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path,
                        help="results .json of bench_unannotated_benefit.py, one per draw")
    parser.add_argument("--arm", required=True, help="the arm compared with scratch")
    parser.add_argument("--k", default="2", help="label count (an int or 'all'; default 2)")
    parser.add_argument("--test", default="unseen_domains", help="test set (default unseen_domains)")
    parser.add_argument("-o", "--output", type=Path,
                        help="also write the figures as JSON here and a plot (.png) beside")
    args = parser.parse_args()
    out = pool(args.results, args.arm, args.k, args.test)
    if not out["pooled"]:
        raise SystemExit(f"no paired rows of {args.arm} and scratch at k = {args.k} on {args.test} in {args.results}")
    for p in out["pooled"]:
        draws = ", ".join(f"{d} {v:+.3f}" for d, v in p["per_draw_mean"].items())
        print(f"{p['structure']}: {args.arm} - scratch {p['mean_diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] "
              f"over {p['n_seeds']} (draw, seed) repeats (per draw: {draws}); target (+0.05, CI above 0) "
              f"{'met' if p['meets_target'] else 'not met'}")
    if args.output:
        args.output.write_text(json.dumps(out, indent=1))
        plot(out, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
