"""Do the unannotated volumes pay? A benchmark with headroom: acquisition domains and hard negatives.

    .venv/bin/python benchmarks/bench_unannotated_benefit.py --profile smoke|cpu|gpu [--work DIR]
        [--arms scratch ...] [--ks 1 all] [--seeds N] [--structures ...] [-o results.json] [--collect]
        [--run-ks 2] [--run-seeds 0 1 2] [--reuse RESULTS_JSON ARMS] [--domain-seed 1]

The label-efficiency study (``bench_ssl_benefit.py``) drew every patch under one imaging condition, so
eight times the labels gave scratch only +0.03 Dice: no room for any use of unannotated data to show.
Here every annotated patch and unannotated volume is recorded in an acquisition domain
(:mod:`nnunetv2_selma.synthetic.domains`: PSF, photon budget, autofluorescence level and texture,
stripes, depth attenuation, object size and brightness spread) and holds hard negatives (bright
unlabelled look-alikes of the target). Of ``n_domains`` domains the first ``labelled_domains`` give the
labelled pool and the held-out ``seen_domains`` test patches; the others are never labelled, their
patches are the ``unseen_domains`` test and their unannotated volumes are in the store. A third test,
``unseen_structure``, runs nuclei models on the c-Fos patches of the unseen domains.

Everything runs through the user's commands (``nnUNetv2_selma_convert``, ``_ingest``, ``_plan``,
``_pretrain``, ``nnUNetv2_train``, ``nnUNetv2_predict``) in this study's own nnU-Net folders, one
training process at a time, resumable (finished runs are kept in ``--work``). Each (k, seed) is one fold
of ``splits_final.json`` whose validation cases are both held-out test sets, so nnU-Net's own final
validation scores them; seed s fixes the labelled subset (k patches of the pool), so arm - scratch at the
same (structure, k, seed) differs only in the method. CI: two-level bootstrap (seeds, then cases).

The gate (before any method is judged): scratch at k = all minus scratch at k = 1 on ``unseen_domains``
must reach +0.10 Dice on at least two structures; ``--gate`` prints it from the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from nnunetv2_selma import experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ssl_benefit as ssl  # noqa: E402  (the label-efficiency study's pipeline steps)
from study_files import STRUCTURES  # noqa: E402  (structure -> subset, dataset id, unannotated folder)

log = logging.getLogger("bench_unannotated_benefit")

TESTS = ("seen_domains", "unseen_domains", "unseen_structure")


#: the product trainer every arm's schedule variant derives from (the profile's trainer names the schedule)
BASE_TRAINER = "nnUNetTrainerSelma"


@dataclass(frozen=True)
class Arm:
    """One study arm: the product trainer it fine-tunes with (at the profile's schedule) and the pretraining
    it starts from (``nnUNetv2_selma_pretrain`` flags on this study's store; None: random initialisation)."""

    name: str
    trainer: str = BASE_TRAINER
    pretraining: tuple[str, ...] | None = None


ARMS = {a.name: a for a in (
    Arm("scratch"),
    Arm("semi", trainer="nnUNetTrainerSelmaSemi"),
    Arm("semi_pl", trainer="nnUNetTrainerSelmaSemiPL"),
    Arm("semi_pl_bright", trainer="nnUNetTrainerSelmaSemiPLBright"),
    Arm("semi_pl_style", trainer="nnUNetTrainerSelmaSemiPLStyle"),
    Arm("semi_pl_style_low", trainer="nnUNetTrainerSelmaSemiPLStyleLow"),
    Arm("semi_pl_double", trainer="nnUNetTrainerSelmaSemiPLDouble"),
    Arm("semi_pl_style_copies", trainer="nnUNetTrainerSelmaSemiPLStyleCopies"),
    Arm("semi_pl_style_copies_aligned", trainer="nnUNetTrainerSelmaSemiPLStyleCopiesAligned"),
    # diagnostic: aligned to the unseen nuclei test patches' share (0.106, from their labels), the lever's ceiling
    Arm("semi_pl_style_copies_aligned_oracle", trainer="nnUNetTrainerSelmaSemiPLStyleCopiesAlignedOracle"),
    # diagnostics: the oracle's share stated a factor two low (0.053) and high (0.212)
    Arm("semi_pl_style_copies_aligned_half", trainer="nnUNetTrainerSelmaSemiPLStyleCopiesAlignedHalf"),
    Arm("semi_pl_style_copies_aligned_double", trainer="nnUNetTrainerSelmaSemiPLStyleCopiesAlignedDouble"),
    # the labelled share times the cube of the store's object size over the labelled images' (label-free)
    Arm("semi_pl_style_copies_aligned_rescaled", trainer="nnUNetTrainerSelmaSemiPLStyleCopiesRescaled"),
    Arm("style_copies", trainer="nnUNetTrainerSelmaStyleCopies"),
    Arm("style_zoom_copies", trainer="nnUNetTrainerSelmaStyleZoomCopies"),
    Arm("semi_pl_capped", trainer="nnUNetTrainerSelmaSemiPLCapped"),
    Arm("semi_pl_capped_above", trainer="nnUNetTrainerSelmaSemiPLCappedAbove"),
    Arm("mae", pretraining=("--method", "mae")),
    Arm("mae_semi", trainer="nnUNetTrainerSelmaSemi", pretraining=("--method", "mae")),
)}


@dataclass(frozen=True)
class Profile:
    name: str
    preset: str
    structures: tuple[str, ...]
    ks: tuple
    seeds: int
    arms: tuple[str, ...]
    trainer: str
    n_domains: int
    labelled_domains: int
    pool_per_domain: int  # labelled pool patches per labelled domain
    test_per_domain: int  # held-out test patches per domain (seen and unseen)
    patch_scale: float
    unannotated_shape: tuple[int, int, int]
    pretrain_iterations: int
    pretrain_batch: int
    device: str = "cpu"
    #: the benchmark draw: its domains, and the scenes of its patches and volumes (0: the draw every result so far
    #: was measured on; another value is a fresh benchmark for a method designed on draw 0)
    domain_seed: int = 0
    #: the labelled labs' imaging conditions from the low half of every range and the new labs' from the high half
    #: (:func:`~nnunetv2_selma.synthetic.domains.draw_domains`' ``shift_from``): a regime where the new domains
    #: differ systematically, not only by the spread of one distribution (the same scenes as without it)
    domain_shift: bool = False
    #: (structure, patch scale) for structures whose annotated patches are drawn at another scale than
    #: ``patch_scale`` (the cpu profile's nuclei: 32^3 as c-Fos, so one labelled patch holds few nuclei)
    patch_scale_of: tuple[tuple[str, float], ...] = ()


def structure_scale(profile: dict, structure: str) -> float:
    """The patch scale of ``structure``'s annotated patches in ``profile`` (a Profile as a dict or JSON record,
    which may predate ``patch_scale_of``)."""
    return dict(profile.get("patch_scale_of", ())).get(structure, profile["patch_scale"])


PROFILES = {p.name: p for p in (
    Profile("smoke", "cpu", ("nuclei",), (1, "all"), 1, ("scratch",), "nnUNetTrainerSelma_1epoch_2it",
            n_domains=3, labelled_domains=2, pool_per_domain=1, test_per_domain=1, patch_scale=0.25,
            unannotated_shape=(32, 64, 64), pretrain_iterations=8, pretrain_batch=2),
    Profile("cpu", "cpu", ("nuclei", "cfos", "plaques"), (1, 2, "all"), 3, ("scratch",),
            "nnUNetTrainerSelma_12epochs_25it_noTTA", n_domains=8, labelled_domains=4, pool_per_domain=4,
            test_per_domain=2, patch_scale=0.32, unannotated_shape=(64, 128, 128), pretrain_iterations=300,
            pretrain_batch=4, patch_scale_of=(("nuclei", 0.16),)),
    Profile("gpu", "M", ("nuclei", "cfos"), (1, "all"), 2, ("scratch",), "nnUNetTrainerSelma_8epochs_25it",
            n_domains=8, labelled_domains=4, pool_per_domain=2, test_per_domain=2, patch_scale=0.64,
            unannotated_shape=(128, 256, 256), pretrain_iterations=500, pretrain_batch=2, device="cuda"),
)}


def case_domains(prof: Profile) -> list[tuple[int, str]]:
    """(domain index, role) of every annotated case number: the pool, then seen-domain tests, then unseen."""
    L, N = prof.labelled_domains, prof.n_domains
    out = [(d, "pool") for _ in range(prof.pool_per_domain) for d in range(L)]
    out += [(d, "seen_domains") for _ in range(prof.test_per_domain) for d in range(L)]
    out += [(d, "unseen_domains") for _ in range(prof.test_per_domain) for d in range(L, N)]
    return out


class DomainStudy(ssl.Study):
    """The label-efficiency study's pipeline on the domain download: data, splits and scoring differ."""

    def __init__(self, prof: Profile, work: Path, arms: tuple[str, ...], seeds: int) -> None:
        base = ssl.Profile(prof.name, prof.preset, prof.structures, prof.ks, 0, 0, seeds, arms,
                           prof.pretrain_iterations, prof.pretrain_batch, prof.trainer, prof.patch_scale,
                           prof.unannotated_shape, 1, device=prof.device)
        super().__init__(base, work, arms, seeds, jobs=1)
        self.domain_prof = prof
        self.roles = case_domains(prof)
        self.run_ks: set[str] | None = None  # label counts to run now (None: all); the others keep their place
        self.run_seeds: list[int] | None = None  # seeds to run now (None: all); the folds stay those of ``seeds``

    def seeds_now(self) -> list[int]:
        return super().seeds_now() if self.run_seeds is None else self.run_seeds

    def run_order(self) -> list:
        """The label-efficiency study's order, restricted to ``run_ks`` (``--run-ks``): every k of the profile
        keeps its place in ``ks`` (and so its labelled subsets), only fewer are run now."""
        return [k for k in super().run_order() if self.run_ks is None or ssl.k_label(k) in self.run_ks]

    # -- data --------------------------------------------------------------------------------------
    def write_data(self, download: Path) -> None:
        from nnunetv2_selma.synthetic.domains import draw_domains
        from nnunetv2_selma.synthetic.download import write_annotated_patches, write_unannotated_volume

        prof = self.domain_prof
        domains = draw_domains(prof.n_domains, prof.domain_seed,
                               shift_from=prof.labelled_domains if prof.domain_shift else None)
        tmp = Path(tempfile.mkdtemp(prefix=".download.partial-", dir=download.parent))
        scenes = 7919 * prof.domain_seed  # draw 0 keeps the seeds every earlier result was measured on
        for s in self.all_structures():  # a subset's bytes depend on its own scale only, not on the others'
            write_annotated_patches(tmp, "challenge", [STRUCTURES[s][0]], cases_per_subset=len(self.roles),
                                    patch_scale=structure_scale(asdict(prof), s), seed=2026 + scenes,
                                    domains=[domains[d] for d, _ in self.roles])
        for s_index, s in enumerate(self.all_structures()):
            for d, domain in enumerate(domains):
                write_unannotated_volume(tmp / f"unannotated_{STRUCTURES[s][2]}" / f"sample_{d + 1}",
                                         prof.unannotated_shape, STRUCTURES[s][2],
                                         seed=ssl_seed(s_index, d) + scenes,
                                         domain=domain)
        record = {"domains": [d.to_dict() for d in domains], "labelled_domains": list(range(prof.labelled_domains)),
                  "cases": [{"case": f"patchvolume_{i:03d}", "domain": d, "role": role}
                            for i, (d, role) in enumerate(self.roles)]}
        (tmp / "domains.json").write_text(json.dumps(record, indent=1))
        shutil.rmtree(download, ignore_errors=True)
        tmp.rename(download)

    def prepare(self) -> None:
        download = self.work / "download"
        if not (download / "domains.json").is_file():
            t = time.perf_counter()
            self.write_data(download)
            self.timings["synthesize"] = time.perf_counter() - t
        if not all(self.dataset_name(s) for s in self.all_structures()):
            self.run("convert", [self.script("nnUNetv2_selma_convert"), "-i", str(download), "-o", str(self.raw),
                                 "--subsets", *(STRUCTURES[s][0] for s in self.all_structures()), "--overwrite",
                                 "--ids", *(f"{STRUCTURES[s][0]}={STRUCTURES[s][1]}" for s in self.all_structures())])
        self.store = self.work / "store"
        uses_store = any(ARMS[a].pretraining or ARMS[a].trainer != BASE_TRAINER for a in self.arms)
        if uses_store and not (self.store / "manifest.json").is_file():
            self.run("ingest", [self.script("nnUNetv2_selma_ingest"), "-i", str(download), "-o", str(self.store),
                                "-np", "2"])
        ids = [str(STRUCTURES[s][1]) for s in self.all_structures()]
        if not all((self.pre / self.dataset_name(s) / f"{self.plans}.json").is_file() for s in self.all_structures()):
            self.run("plan", [self.script("nnUNetv2_selma_plan"), "-d", *ids, "--preset", self.prof.preset,
                              "-np", "2"])
        self.cases = {s: self.write_splits(s) for s in self.all_structures()}

    def all_structures(self) -> list[str]:
        extra = ["cfos"] if "nuclei" in self.prof.structures and "cfos" not in self.prof.structures else []
        return list(self.prof.structures) + extra

    def dataset_id(self, structure: str) -> int:
        return STRUCTURES[structure][1]

    def write_splits(self, structure: str) -> dict:
        """One fold per (k, seed): k pool patches for training; validation = both held-out test sets."""
        name = self.dataset_name(structure)
        cases = experiment.labelled_cases(self.raw / name)
        if len(cases) != len(self.roles):
            raise RuntimeError(f"{name}: {len(cases)} cases, expected {len(self.roles)} (domains.json)")
        by_role = {role: [c for c, (_, r) in zip(cases, self.roles) if r == role]
                   for role in ("pool", "seen_domains", "unseen_domains")}
        pool, test = by_role["pool"], by_role["seen_domains"] + by_role["unseen_domains"]
        splits, folds = [], {}
        for ki, k in enumerate(self.prof.ks):
            for s in range(self.seeds):
                train = sorted(pool) if k == "all" else experiment.draw_labelled(
                    pool, int(k), (s, ki, STRUCTURES[structure][1]))
                folds[(ssl.k_label(k), s)] = len(splits)
                splits.append({"train": train, "val": list(test)})
        experiment.write_splits(self.pre / name / "splits_final.json", splits)
        # the unseen-structure test (nuclei models on c-Fos) uses the unseen-domain patches
        return {"pool": pool, "test": by_role["unseen_domains"], "folds": folds, **by_role}

    # -- arms ---------------------------------------------------------------------------------------
    def arm_pretraining(self, arm: str) -> list[str] | None:
        flags = ARMS[arm].pretraining
        return None if flags is None else [*flags, "--structures", *(STRUCTURES[s][2] for s in self.all_structures())]

    def trainer_name(self, arm: str) -> str:
        """The arm's trainer at the profile's schedule: nnUNetTrainerSelma_12epochs_25it_noTTA ->
        nnUNetTrainerSelmaSemi_12epochs_25it_noTTA (a class of nnunetv2_selma.training.study_variants)."""
        return ARMS[arm].trainer + self.prof.trainer[len(BASE_TRAINER):]

    def train_env(self, arm: str) -> dict:
        return {"nnUNet_selma_store": str(self.store)}

    # -- scoring -----------------------------------------------------------------------------------
    def validation_rows(self, structure, k, seed, arm, fold, model, seconds) -> list[dict]:
        row = self.score(structure, k, seed, arm, fold, model, model / f"fold_{fold}" / "validation",
                         structure, seconds, cases=self.cases[structure]["seen_domains"]
                         + self.cases[structure]["unseen_domains"])
        out = []
        for test in ("seen_domains", "unseen_domains"):
            per_case = {c: row["per_case_dice"][c] for c in self.cases[structure][test]}
            out.append({**row, "test": test, "per_case_dice": per_case,
                        "dice": float(np.mean(list(per_case.values())))})
        return out

    def score(self, test, k, seed, arm, fold, model, pred_dir, trained_on, seconds, cases=None) -> dict:
        row = super().score(test, k, seed, arm, fold, model, pred_dir, trained_on, seconds, cases=cases)
        if test != trained_on:
            row["test"] = "unseen_structure"
        return row


def ssl_seed(s_index: int, d: int) -> int:
    return 4000 + 100 * s_index + d


def keyed(rows: list[dict]) -> list[dict]:
    """Rows with ``structure`` = "<trained on>/<test>" so the other study's grouping keeps the tests apart."""
    return [{**r, "structure": f"{r['trained_on']}/{r['test']}"} for r in rows]


def gate(rows: list[dict]) -> dict:
    """Scratch at k = all minus k = 1 on the unseen domains, per structure, with the seeds' spread."""
    out = {}
    for s in sorted({r["trained_on"] for r in rows}):
        by_k = {}
        for k in ("1", "all"):
            d = [r["dice"] for r in rows if r["trained_on"] == s and r["test"] == "unseen_domains"
                 and r["arm"] == "scratch" and ssl.k_label(r["k"]) == k]
            by_k[k] = d
        if by_k["1"] and by_k["all"]:
            out[s] = {"k1_mean": float(np.mean(by_k["1"])), "k1_seeds": by_k["1"],
                      "all_mean": float(np.mean(by_k["all"])), "all_seeds": by_k["all"],
                      "gain": float(np.mean(by_k["all"]) - np.mean(by_k["1"]))}
    out["holds"] = sum(v["gain"] >= 0.10 for v in out.values() if isinstance(v, dict)) >= 2
    return out


def domain_gap(rows: list[dict]) -> dict:
    """Scratch on the labelled domains' held-out patches minus scratch on the new domains', per structure and k,
    seed by seed (the same model scored on both): the most that teaching the new imaging conditions could add at
    that label count. The gate above is label headroom (more labels of the same domains); where this gap is near
    0, scratch fails as much on the domains it was labelled in, and the new volumes have no domain error to fix."""
    out: dict = {}
    for s in sorted({r["trained_on"] for r in rows}):
        for k in sorted({ssl.k_label(r["k"]) for r in rows if r["trained_on"] == s}):
            by_seed: dict[int, dict] = {}
            for r in rows:
                if (r["trained_on"] == s and r["arm"] == "scratch" and ssl.k_label(r["k"]) == k
                        and r["test"] in ("seen_domains", "unseen_domains")):
                    by_seed.setdefault(r["seed"], {})[r["test"]] = r["dice"]
            gaps = {seed: d["seen_domains"] - d["unseen_domains"] for seed, d in sorted(by_seed.items())
                    if len(d) == 2}
            if gaps:
                out.setdefault(s, {})[k] = {"mean": float(np.mean(list(gaps.values()))),
                                            "per_seed": {str(seed): g for seed, g in gaps.items()}}
    return out


def gain_vs_scratch(rows: list[dict]) -> list[dict]:
    """Where the gains sit: per (structure, test, int k, arm) the seeds' scratch Dice against the paired
    difference arm - scratch (``r`` their correlation, ``slope`` of the difference on scratch's Dice) and each
    side's worst seed. A slope near -1 means the arm lands at about the same Dice whatever scratch reached:
    it lifts the labelled subsets scratch fails on and costs the ones it does well on."""
    by = {}
    for r in rows:
        if r["k"] != "all":
            by.setdefault((r["trained_on"], r["test"], ssl.k_label(r["k"]), r["arm"]), {})[r["seed"]] = r["dice"]
    out = []
    for (s, test, k, arm), dice in sorted(by.items()):
        base = by.get((s, test, k, "scratch"), {})
        seeds = sorted(set(dice) & set(base))
        if arm == "scratch" or len(seeds) < 3:
            continue
        x = np.array([base[i] for i in seeds])
        y = np.array([dice[i] for i in seeds]) - x
        flat = np.ptp(x) == 0 or np.ptp(y) == 0
        out.append({"structure": s, "test": test, "k": k, "method": arm, "seeds": seeds,
                    "scratch": x.tolist(), "diff": y.tolist(),
                    "r": None if flat else float(np.corrcoef(x, y)[0, 1]),
                    "slope": None if np.ptp(x) == 0 else float(np.polyfit(x, y, 1)[0]),
                    "scratch_worst": float(x.min()), "arm_worst": float((x + y).min())})
    return out


def plot_gain(records: list[dict], path: Path, test: str = "unseen_domains") -> None:
    """Paired difference against scratch's Dice, one point per seed, one panel per (structure, k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [g for g in records if g["test"] == test]
    panels = list(dict.fromkeys((g["structure"], g["k"]) for g in records))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4), squeeze=False)
    for ax, (s, k) in zip(axes[0], panels):
        for g in (g for g in records if (g["structure"], g["k"]) == (s, k)):
            ax.plot(g["scratch"], g["diff"], "o", label=f"{g['method']} (r {g['r']:+.2f})" if g["r"] is not None
                    else g["method"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("scratch Dice of the seed")
        ax.set_ylabel("arm - scratch")
        ax.set_title(f"{s}, k = {k}, {test}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("where the unannotated volumes gain: paired difference against scratch's own Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: profile fields that must agree for a finished run of an earlier results file to count as a run of this study
SAME_DATA = ("preset", "trainer", "n_domains", "labelled_domains", "pool_per_domain", "test_per_domain",
             "unannotated_shape", "domain_seed", "domain_shift", "device")
#: what a results file written before a field existed drew (its default)
DEFAULTS = {f.name: f.default for f in fields(Profile) if f.default is not MISSING}


def check_reusable(prof: Profile, results_file: Path) -> dict:
    """The earlier results file whose runs are to count here, refused unless it drew the same data, schedule and
    labelled subsets: the fields of SAME_DATA equal and every int k shared by both at the same place in ``ks``
    (the subset of k patches is drawn from (seed, place of k, dataset id)). Patch scales are compared per
    structure by :func:`reuse_rows`."""
    earlier = json.loads(results_file.read_text())
    old, new = earlier["profile"], asdict(prof)
    for field in SAME_DATA:
        there = old.get(field, DEFAULTS.get(field))
        if json.dumps(there) != json.dumps(new[field]):
            raise SystemExit(f"--reuse {results_file}: profile field {field} is {there!r} there and "
                             f"{new[field]!r} here; its runs are not runs of this study")
    old_ks, new_ks = [ssl.k_label(k) for k in old["ks"]], [ssl.k_label(k) for k in prof.ks]
    for k in set(old_ks) & set(new_ks) - {"all"}:
        if old_ks.index(k) != new_ks.index(k):
            raise SystemExit(f"--reuse {results_file}: k = {k} is at place {old_ks.index(k)} of its ks "
                             f"{old['ks']} and at {new_ks.index(k)} here: another labelled subset")
    return earlier


def reuse_rows(study: DomainStudy, earlier: dict, source: str, arms: tuple[str, ...]) -> int:
    """Write the finished runs of ``arms`` in ``earlier`` (checked by :func:`check_reusable`) as this study's row
    files; runs already done here are kept. Runs of a structure (or tested on one) whose patches were drawn at
    another scale there are left out and named. Returns the number of runs written."""
    new_ks = [ssl.k_label(k) for k in study.prof.ks]
    here = asdict(study.domain_prof)
    other_scale = sorted(s for s in study.all_structures()
                         if structure_scale(earlier["profile"], s) != structure_scale(here, s))
    if other_scale:
        log.info("not reused: runs of %s (patches of another scale there)", ", ".join(other_scale))
    runs: dict[tuple, list[dict]] = {}
    for r in earlier["rows"]:
        k, s = ssl.k_label(r["k"]), r["structure"]
        if r["arm"] not in arms or s not in study.prof.structures or k not in new_ks:
            continue
        if s in other_scale or (r["test"] == "unseen_structure" and ssl.UNSEEN[s] in other_scale):
            continue
        tested_on = ssl.UNSEEN[s] if r["test"] == "unseen_structure" else s
        runs.setdefault((s, k, r["arm"], r["seed"]), []).append({
            "structure": s if tested_on == s else f"{s}->{tested_on}", "trained_on": s, "tested_on": tested_on,
            "test": r["test"], "k": r["k"], "n_train": len(study.cases[s]["pool"]) if k == "all" else int(k),
            "arm": r["arm"], "seed": r["seed"], "dice": r["dice"], "per_case_dice": r["per_case_dice"],
            "fold": study.cases[s]["folds"][(k, r["seed"])], "trainer": study.trainer_name(r["arm"]),
            "finetune_seconds": r["finetune_seconds"], "model_folder": f"reused from {source}"})
    written = 0
    for (s, k, arm, seed), rows in runs.items():
        f = study.rows_dir / study.prof.trainer / f"{s}_k{k}_{arm}_seed{seed}.json"
        if not f.is_file():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(rows, indent=1))
            written += 1
    log.info("reused %d finished runs of %s from %s", written, "/".join(arms), source)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    parser.add_argument("--work", default=None, help="working folder (default /tmp/selma_unannotated_<profile>)")
    parser.add_argument("-o", "--output", default=None, help="results .json (default WORK/results.json)")
    parser.add_argument("--arms", nargs="+", default=None, choices=sorted(ARMS))
    parser.add_argument("--structures", nargs="+", default=None, choices=sorted(STRUCTURES))
    parser.add_argument("--ks", nargs="+", default=None, help="label counts (ints and 'all')")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--run-ks", nargs="+", default=None,
                        help="run only these label counts now (each k of --ks keeps its labelled subsets; "
                             "--collect still gathers every k)")
    parser.add_argument("--run-seeds", nargs="+", type=int, default=None,
                        help="run only these seeds now (the folds stay those of --seeds)")
    parser.add_argument("--domain-seed", type=int, default=None,
                        help="another benchmark draw: other domains and scenes (default: the profile's, 0)")
    parser.add_argument("--domain-shift", action="store_true",
                        help="the new domains' imaging conditions from the other half of every range than the "
                             "labelled ones' (a change of lab; default: one spread for all)")
    parser.add_argument("--collect", action="store_true", help="no new run: results from the runs finished so far")
    parser.add_argument("--reuse", nargs=2, metavar=("RESULTS_JSON", "ARMS"), default=None,
                        help="count the finished runs of ARMS (comma-separated) in an earlier results file of the "
                             "same data and schedule as runs of this study (e.g. the gate's scratch runs)")
    args = parser.parse_args(argv)

    prof = PROFILES[args.profile]
    if args.structures:
        prof = replace(prof, structures=tuple(args.structures))
    if args.domain_seed is not None:
        prof = replace(prof, domain_seed=args.domain_seed)
    if args.domain_shift:
        prof = replace(prof, domain_shift=True)
    if args.ks:
        prof = replace(prof, ks=tuple(k if k == "all" else int(k) for k in args.ks))
    arms = tuple(args.arms or prof.arms)
    if "scratch" not in arms:
        parser.error("--arms must include scratch (every difference is paired against it)")
    seeds = args.seeds or prof.seeds
    work = Path(args.work or f"/tmp/selma_unannotated_{prof.name}").resolve()
    ssl.start_study_log(work, prof.name, arms, seeds)
    t0 = time.perf_counter()
    earlier = check_reusable(prof, Path(args.reuse[0])) if args.reuse else None
    study = DomainStudy(prof, work, arms, seeds)
    if args.run_ks:
        unknown = set(args.run_ks) - {ssl.k_label(k) for k in prof.ks}
        if unknown:
            parser.error(f"--run-ks {sorted(unknown)} not among the label counts {list(prof.ks)}")
        study.run_ks = set(args.run_ks)
    if args.run_seeds:
        if not set(args.run_seeds) <= set(range(seeds)):
            parser.error(f"--run-seeds {args.run_seeds}: seeds are 0 to {seeds - 1} (--seeds {seeds})")
        study.run_seeds = sorted(set(args.run_seeds))
    study.prepare()
    if earlier is not None:
        reuse_rows(study, earlier, Path(args.reuse[0]).name, tuple(args.reuse[1].split(",")))
    if not args.collect:
        study.execute()
    rows, total = study.collect()  # every finished run, those of label counts --run-ks left out included
    runs_done = len({(r["trained_on"], ssl.k_label(r["k"]), r["arm"], r["seed"]) for r in rows})
    shown = keyed(rows)
    results = {"profile": {**asdict(prof), "arms": list(arms), "seeds": seeds},
               "complete": runs_done == total, "runs_done": runs_done,
               "rows": [{"structure": r["trained_on"], "test": r["test"], "k": r["k"], "arm": r["arm"],
                         "seed": r["seed"], "dice": r["dice"], "per_case_dice": r["per_case_dice"],
                         "finetune_seconds": r["finetune_seconds"]} for r in rows],
               "paired": [{**p, "structure": p["structure"].split("/")[0], "test": p["structure"].split("/")[1]}
                          for p in ssl.paired_differences(shown)],
               "gate": gate(rows), "domain_gap": domain_gap(rows), "gain_vs_scratch": gain_vs_scratch(rows),
               "domains": json.loads((work / "download" / "domains.json").read_text()),
               "timings": {**study.timings, "total": time.perf_counter() - t0},
               **ssl.run_record()}
    out = Path(args.output) if args.output else work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    table = ssl.write_table({**results, "rows": shown, "paired": ssl.paired_differences(shown)}, out.with_suffix(".md"))
    ssl.plot({**results, "rows": shown}, out.with_suffix(".png"))
    plot_gain(results["gain_vs_scratch"], out.with_name(out.stem + "_gain.png"))
    print(table)
    print("gate:", json.dumps(results["gate"], indent=1))
    print("domain gap (scratch, seen - unseen domains, by k):", json.dumps(
        {s: {k: round(v["mean"], 3) for k, v in by_k.items()} for s, by_k in results["domain_gap"].items()}))
    print(f"results: {out} ({results['timings']['total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
