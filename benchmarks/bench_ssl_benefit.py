"""Label-efficiency study: does self-supervised pretraining pay when labels are few?

    .venv/bin/python benchmarks/bench_ssl_benefit.py --profile smoke|cpu|gpu [--work DIR] [--jobs N]
        [--arms scratch mae denoise ...] [--seeds N] [-o results.json]

Everything goes through the commands a user types, as subprocesses with this study's own
``nnUNet_raw/_preprocessed/_results`` folders:

1. a generated SELMA3D-like download (annotated patches of nuclei, c-Fos, plaques; unannotated
   volumes of every structure) plus the real two-channel light-sheet volume of
   ``../shared/realdata/cellfinder_mouse_brain`` (linked in as ``unannotated_cells/cellfinder``);
2. ``nnUNetv2_selma_convert`` -> one nnU-Net dataset per structure, ``nnUNetv2_selma_ingest`` -> one
   pretraining store, ``nnUNetv2_selma_plan --preset P`` -> the same network for every dataset;
3. per seed and pretraining arm ``nnUNetv2_selma_pretrain --seed S`` on the store;
4. per structure, k in the profile's label counts, seed and arm: ``nnUNetv2_train D 3d_fullres FOLD
   -tr TRAINER -p PLANS [-pretrained_weights CKPT]``. Each (k, seed) is one fold of a
   ``splits_final.json`` written before training: its training cases are k patches drawn with the
   seed from the training pool, its validation cases are the held-out test patches (the same for
   every k, seed and arm), so nnU-Net's own final validation scores the held-out set;
5. nuclei models are also run with ``nnUNetv2_predict`` on the held-out c-Fos patches (an unseen
   structure, as in the 2024 test phase).

Pairing: seed s fixes the pretraining seed and the fine-tuning subset, so ``arm - scratch`` at the
same (structure, k, seed) differs only in the initial weights (nnU-Net's own training is not
seeded: its initialisation and sampling differ between any two runs, which the seeds' spread
contains). The 95% CI of the mean paired difference is a two-level bootstrap (seeds, then test
cases within a seed) of per-case Dice differences (``nnunetv2_selma.evaluation.stats``).

Writes into ``--work`` (resumable: finished runs are kept, a rerun does the rest) and ``-o``:
``results.json`` (``rows``, ``paired``, profile, timings, machine), a markdown table next to it and
``<stem>.png`` (Dice against k, one line per arm, CI bands). Progress bar and ``study.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnunetv2_selma import experiment
from nnunetv2_selma.structures import unannotated_folder_structures

HERE = Path(__file__).resolve().parent
REALDATA = HERE.parent.parent / "shared" / "realdata" / "cellfinder_mouse_brain"
log = logging.getLogger("bench_ssl_benefit")

#: structure -> (subset of the 2024 download, dataset id)
STRUCTURES = {"nuclei": ("shannel_cells", 701), "vessel": ("VessAP_vessel", 702), "cfos": ("cFos-Active_Neurons", 703),
              "plaques": ("AD_plaques", 704)}
#: the unseen-structure test: models fine-tuned on the key are tested on the value's held-out patches
UNSEEN = {"nuclei": "cfos"}

#: arm -> pretraining command-line flags (None: from scratch). "mae" is the plugin's default method.
ARMS: dict[str, list[str] | None] = {
    "scratch": None,
    "mae": ["--method", "mae"],
    "denoise": ["--method", "denoise"],
    # denoising with noise as strong as the normalised image (std 1.0): the best of the linear-probe screen
    # (benchmarks/probe_ssl_features.py), c-Fos probe AP 0.77 against 0.55 for random encoders
    "denoise_n1": ["--method", "denoise", "--noise-std", "1.0"],
    # its checkpoints as nnssl checkpoints: stem and encoder loaded, decoder at random (as mae_encoder)
    "denoise_n1_encoder": ["--method", "denoise", "--noise-std", "1.0"],
    # the same, fine-tuned with the encoder at a tenth of the learning rate: keeps the features the probe rewards
    "denoise_n1_encoder_slow": ["--method", "denoise", "--noise-std", "1.0"],
    # the block size of presets M and L on the cpu preset's 32^3 patch (8 blocks, 2 visible)
    "mae_block16": ["--method", "mae", "--block-size", "16"],
    # the mae arm's own checkpoints, written as nnssl checkpoints (nnUNetv2_selma_export_checkpoint): from
    # those the fine-tuning loads stem and encoder only, the decoder starts at random
    "mae_encoder": ["--method", "mae"],
    # pretraining length: the profile's iterations times ARM_ITERATIONS, full load and encoder only
    "mae_long": ["--method", "mae"],
    "mae_long_encoder": ["--method", "mae"],
    # the same, fine-tuned with the encoder at a tenth of the learning rate (ARM_TRAINER_SUFFIX)
    "mae_long_encoder_slow": ["--method", "mae"],
    # the pretraining data: tissue-aware sampling draws in proportion to tissue, so the real two-channel
    # volume (~70,000 tissue blocks against ~600 per generated volume) gives 96% of the patches of every arm
    # above; this arm samples the generated volumes only (the folders the generator writes), the domain the
    # fine-tuning patches come from
    "mae_generated": ["--method", "mae", "--structures", *sorted(unannotated_folder_structures())],
}
#: arm -> the arm whose pretraining it reuses, exported in nnssl format (encoder only is loaded)
ENCODER_ONLY = {"mae_encoder": "mae", "denoise_n1_encoder": "denoise_n1", "denoise_n1_encoder_slow": "denoise_n1",
                "mae_long_encoder": "mae_long", "mae_long_encoder_slow": "mae_long"}
#: arm -> suffix of the profile's trainer it fine-tunes with (a variant in nnunetv2_selma.training.trainers)
ARM_TRAINER_SUFFIX = {"mae_long_encoder_slow": "_encoderLR0p1", "denoise_n1_encoder_slow": "_encoderLR0p1"}
#: arm -> multiple of the profile's pretraining iterations (default 1)
ARM_ITERATIONS = {"mae_long": 4}


@dataclass(frozen=True)
class Profile:
    name: str
    preset: str
    structures: tuple[str, ...]
    ks: tuple  # ints and "all"
    n_pool: int  # annotated patches a fine-tuning subset is drawn from ("all" = every one)
    n_test: int  # held-out patches per structure
    seeds: int
    arms: tuple[str, ...]
    pretrain_iterations: int
    pretrain_batch: int
    trainer: str
    patch_scale: float
    unannotated_shape: tuple[int, int, int]
    jobs: int
    device: str = "cpu"
    # object brightness of the generated data (synthetic.volumes.LightSheetScene): 1.0 left scratch
    # near its ceiling with one labelled patch (Dice 0.80-0.90), too easy to show what labels are worth
    contrast: float = 0.15
    extra: dict = field(default_factory=dict)


PROFILES = {p.name: p for p in (
    Profile("smoke", "cpu", ("nuclei",), (1, "all"), 2, 2, 2, ("scratch", "mae"), 8, 2,
            "nnUNetTrainerSelma_1epoch_2it", 0.25, (32, 96, 96), 1),
    Profile("cpu", "cpu", ("nuclei", "cfos", "plaques"), (1, 2, 4, "all"), 8, 4, 3, ("scratch", "mae"),
            300, 4, "nnUNetTrainerSelma_6epochs_25it_noTTA", 0.25, (64, 128, 128), 1),
    # reduced to fit the device check's budget (benchmarks/gpu_check.sh, section ssl_benefit)
    Profile("gpu", "M", ("nuclei",), (1, "all"), 8, 4, 2, ("scratch", "mae"), 500, 2,
            "nnUNetTrainerSelma_8epochs_25it", 0.64, (128, 256, 256), 1, device="cuda"),
)}


def k_label(k) -> str:
    return "all" if k == "all" else str(int(k))


def label_counts(rows: list[dict]) -> list[str]:
    """The label counts of ``rows`` in increasing order, "all" last (rows come in run order: 1, 2, all, 4)."""
    return sorted({k_label(r["k"]) for r in rows}, key=lambda k: (k == "all", int(k) if k != "all" else 0))


class Study:
    def __init__(self, prof: Profile, work: Path, arms: tuple[str, ...], seeds: int, jobs: int) -> None:
        self.prof, self.work, self.arms, self.seeds, self.jobs = prof, work, arms, seeds, jobs
        self.raw, self.pre, self.rows_dir = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "rows"
        self.logs = work / "logs"
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        base = dict(os.environ)
        if jobs > 1:  # two training processes at once: one augmentation worker each
            base.setdefault("nnUNet_n_proc_DA", "1")
        self.env = {**experiment.nnunet_environment(work, prof.device, base),
                    "nnUNet_results": str(work / "nnUNet_results_unused")}
        self.run = experiment.CommandRunner(self.logs, self.env)
        self.plans = f"nnUNetSelmaPlans_{prof.preset}"
        self.timings = self.run.timings
        self._lock = threading.Lock()
        self._pretraining_locks: dict[tuple[str, int], threading.Lock] = {}

    script = staticmethod(experiment.console_script)

    # -- stage 1-2: data, datasets, store, plans ---------------------------------------------
    def prepare(self) -> None:
        prof = self.prof
        download = self.work / "download"
        if not (download / "synthetic_summary.json").is_file():
            from nnunetv2_selma.synthetic.download import write_download

            t = time.perf_counter()
            shutil.rmtree(download, ignore_errors=True)
            write_download(download, cases_per_subset=prof.n_pool + prof.n_test, patch_scale=prof.patch_scale,
                           unannotated_shape=prof.unannotated_shape, seed=2026, test_inputs=False,
                           contrast=prof.contrast)
            self.timings["synthesize"] = time.perf_counter() - t
        real = download / "unannotated_cells" / "cellfinder"
        if REALDATA.is_dir() and not real.exists():
            real.parent.mkdir(parents=True, exist_ok=True)
            real.symlink_to(REALDATA, target_is_directory=True)
        elif not REALDATA.is_dir():
            log.warning("real light-sheet volume %s not found: the store holds generated volumes only", REALDATA)
        subsets = [STRUCTURES[s][0] for s in self.all_structures()]
        if not all(self.dataset_name(s) for s in self.all_structures()):
            self.run("convert", [self.script("nnUNetv2_selma_convert"), "-i", str(download), "-o", str(self.raw),
                                 "--subsets", *subsets, "--overwrite",
                                 "--ids", *(f"{STRUCTURES[s][0]}={STRUCTURES[s][1]}" for s in self.all_structures())])
        self.store = self.work / "store"
        if not (self.store / "manifest.json").is_file():
            self.run("ingest", [self.script("nnUNetv2_selma_ingest"), "-i", str(download), "-o", str(self.store),
                                "-np", "2"])
        ids = [str(STRUCTURES[s][1]) for s in self.all_structures()]
        if not all((self.pre / self.dataset_name(s) / f"{self.plans}.json").is_file() for s in self.all_structures()):
            self.run("plan", [self.script("nnUNetv2_selma_plan"), "-d", *ids, "--preset", prof.preset, "-np", "2"])
        self.cases = {s: self.write_splits(s) for s in self.all_structures()}

    def all_structures(self) -> list[str]:
        extra = [UNSEEN[s] for s in self.prof.structures if s in UNSEEN and UNSEEN[s] not in self.prof.structures]
        return list(self.prof.structures) + extra

    def dataset_id(self, structure: str) -> int:
        return STRUCTURES[structure][1]

    def dataset_name(self, structure: str) -> str | None:
        folder = experiment.dataset_folder(self.raw, self.dataset_id(structure))
        return folder.name if folder else None

    def write_splits(self, structure: str) -> dict:
        """One fold per (k, seed): k pool patches for training, the held-out patches for validation."""
        name = self.dataset_name(structure)
        cases = experiment.labelled_cases(self.raw / name)
        pool, test = cases[: self.prof.n_pool], cases[self.prof.n_pool: self.prof.n_pool + self.prof.n_test]
        if len(pool) < self.prof.n_pool or len(test) < self.prof.n_test:
            raise RuntimeError(f"{name}: {len(cases)} cases, need {self.prof.n_pool} + {self.prof.n_test}")
        splits, folds = [], {}
        for ki, k in enumerate(self.prof.ks):
            for s in range(self.seeds):
                train = sorted(pool) if k == "all" else experiment.draw_labelled(
                    pool, int(k), (s, ki, STRUCTURES[structure][1]))
                folds[(k_label(k), s)] = len(splits)
                splits.append({"train": train, "val": list(test)})
        experiment.write_splits(self.pre / name / "splits_final.json", splits)
        return {"pool": pool, "test": test, "folds": folds}

    # -- stage 3: pretraining ------------------------------------------------------------------
    def pretrain(self, arm: str, seed: int) -> Path:
        # one pretraining per (arm, seed) even when mae_encoder's job asks for mae's in another thread
        with self._lock:
            lock = self._pretraining_locks.setdefault((arm, seed), threading.Lock())
        with lock:
            return self._pretrain(arm, seed)

    def _pretrain(self, arm: str, seed: int) -> Path:
        if arm in ENCODER_ONLY:
            source = self.pretrain(ENCODER_ONLY[arm], seed)
            exported = self.work / "pretraining" / f"{arm}_seed{seed}" / "checkpoint_nnssl.pth"
            if not exported.is_file():
                exported.parent.mkdir(parents=True, exist_ok=True)
                self.run(f"export__{arm}_seed{seed}", [self.script("nnUNetv2_selma_export_checkpoint"), "--format",
                                                        "nnssl", str(source), str(exported)])
            return exported
        out = self.work / "pretraining" / f"{arm}_seed{seed}"
        final = out / "checkpoint_final.pth"
        if final.is_file():
            return final
        plans_file = self.pre / self.dataset_name(self.prof.structures[0]) / f"{self.plans}.json"
        iterations = self.prof.pretrain_iterations * ARM_ITERATIONS.get(arm, 1)
        self.run(f"pretrain__{arm}_seed{seed}", [
            self.script("nnUNetv2_selma_pretrain"), "--store", str(self.store), "--plans", str(plans_file),
            "-o", str(out), *self.arm_pretraining(arm), "--iterations", str(iterations),
            "--batch-size", str(self.prof.pretrain_batch), "--seed", str(1000 + seed), "--device", self.prof.device,
            "--checkpoint-every", str(max(1, iterations // 4)), "--no-progress", "--continue"])
        return final

    # -- stage 4-5: fine-tuning and scoring -----------------------------------------------------
    def arm_pretraining(self, arm: str) -> list[str] | None:
        """The arm's nnUNetv2_selma_pretrain flags (None: no pretraining)."""
        return ARMS[arm]

    def trainer_name(self, arm: str) -> str:
        """The nnU-Net trainer the arm fine-tunes with."""
        return self.prof.trainer + ARM_TRAINER_SUFFIX.get(arm, "")

    def train_env(self, arm: str) -> dict:
        """Environment variables the arm's fine-tuning needs beyond the study's own."""
        return {}

    def finetune(self, structure: str, k, seed: int, arm: str, checkpoint: Future | None) -> dict:
        run_id = f"{structure}_k{k_label(k)}_{arm}_seed{seed}"
        row_file = self.rows_dir / self.prof.trainer / f"{run_id}.json"
        if row_file.is_file():
            return json.loads(row_file.read_text())
        weights = checkpoint.result() if checkpoint is not None else None
        name = self.dataset_name(structure)
        fold = self.cases[structure]["folds"][(k_label(k), seed)]
        results = self.work / f"nnUNet_results_{arm}"
        trainer = self.trainer_name(arm)
        model = results / name / f"{trainer}__{self.plans}__3d_fullres"
        shutil.rmtree(model / f"fold_{fold}", ignore_errors=True)
        cmd = [self.script("nnUNetv2_train"), str(self.dataset_id(structure)), "3d_fullres", str(fold),
               "-tr", trainer, "-p", self.plans, "-device", self.prof.device]
        if weights is not None:
            cmd += ["-pretrained_weights", str(weights)]
        seconds = self.run(f"finetune__{run_id}", cmd, env={"nnUNet_results": str(results), **self.train_env(arm)})
        rows = self.validation_rows(structure, k, seed, arm, fold, model, seconds)
        if structure in UNSEEN:
            target = UNSEEN[structure]
            pred_dir = model / f"fold_{fold}" / f"unseen_{target}"
            self.run(f"predict__{run_id}", [
                self.script("nnUNetv2_predict"), "-i", str(self.test_input_folder(target)), "-o", str(pred_dir),
                "-d", str(self.dataset_id(structure)), "-c", "3d_fullres", "-f", str(fold), "-tr", trainer,
                "-p", self.plans, "-device", self.prof.device, "--disable_progress_bar", "-npp", "1", "-nps", "1",
                *(["--disable_tta"] if self.prof.device == "cpu" else [])], env={"nnUNet_results": str(results)})
            rows.append(self.score(target, k, seed, arm, fold, model, pred_dir, structure, seconds))
        row_file.parent.mkdir(parents=True, exist_ok=True)
        row_tmp = row_file.with_suffix(".tmp")
        row_tmp.write_text(json.dumps(rows, indent=1))
        os.replace(row_tmp, row_file)
        return rows

    def validation_rows(self, structure: str, k, seed: int, arm: str, fold: int, model: Path,
                        seconds: float) -> list[dict]:
        """Rows scored on nnU-Net's final validation of the fold (the held-out patches)."""
        return [self.score(structure, k, seed, arm, fold, model, model / f"fold_{fold}" / "validation",
                           structure, seconds)]

    def test_input_folder(self, structure: str) -> Path:
        """The held-out patches of ``structure`` as an nnU-Net input folder (links to imagesTr)."""
        folder = self.work / "test_inputs" / structure
        with self._lock:
            if not folder.is_dir():
                tmp = folder.with_name(folder.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                images = self.raw / self.dataset_name(structure) / "imagesTr"
                for case in self.cases[structure]["test"]:
                    for f in images.glob(f"{case}_*.nii.gz"):
                        (tmp / f.name).symlink_to(f)
                tmp.rename(folder)
        return folder

    def score(self, test: str, k, seed: int, arm: str, fold: int, model: Path, pred_dir: Path, trained_on: str,
              seconds: float, cases: list[str] | None = None) -> dict:
        from nnunetv2_selma.evaluation.metrics import dice
        from nnunetv2_selma.volumes.images import read_image

        labels = self.raw / self.dataset_name(test) / "labelsTr"
        per_case = {}
        for case in self.cases[test]["test"] if cases is None else cases:
            ref, _ = read_image(labels / f"{case}.nii.gz")
            pred, _ = read_image(pred_dir / f"{case}.nii.gz")
            per_case[case] = dice(pred, ref)
        return {"structure": test if test == trained_on else f"{trained_on}->{test}", "trained_on": trained_on,
                "tested_on": test, "k": k if k == "all" else int(k),
                "n_train": len(self.cases[trained_on]["pool"]) if k == "all" else int(k),
                "arm": arm, "seed": seed, "dice": float(np.mean(list(per_case.values()))), "per_case_dice": per_case,
                "fold": fold, "trainer": self.trainer_name(arm),
                "finetune_seconds": round(seconds, 1),
                "model_folder": str(model)}

    def run_order(self) -> list:
        """Label counts in the order runs are made: the first two listed (the few-label end the targets name,
        k = 1 and 2 in the profiles), then every label, then the rest, so a study stopped early holds the
        smallest k first."""
        ks = list(self.prof.ks)
        ends = [k for k in ks[:2] if k != "all"] + [k for k in ks if k == "all"]
        return ends + [k for k in ks if k not in ends]

    def seeds_now(self) -> list[int]:
        """The seeds whose fine-tuning runs this invocation makes (all of them here)."""
        return list(range(self.seeds))

    def collect(self) -> tuple[list[dict], int]:
        """Rows of the runs finished so far (no new run) and the number of runs the study has in all."""
        rows, total = [], 0
        for k in self.prof.ks:
            for s in range(self.seeds):
                for structure in self.prof.structures:
                    for arm in self.arms:
                        total += 1
                        f = self.rows_dir / self.prof.trainer / f"{structure}_k{k_label(k)}_{arm}_seed{s}.json"
                        if f.is_file():
                            rows.extend(json.loads(f.read_text()))
        return rows, total

    def execute(self) -> list[dict]:
        from tqdm import tqdm

        pretrained_arms = [a for a in self.arms if self.arm_pretraining(a) is not None]
        tasks = []
        with ThreadPoolExecutor(self.jobs) as pool:
            # FIFO: pretraining first, so a thread only ever waits on a pretraining job another thread has
            # already started; then fine-tuning by label count, seed, structure, arm: a study stopped early
            # (it resumes) holds complete pairs at the smallest k first (then k = all, see run_order)
            checkpoints = {(a, s): pool.submit(self.pretrain, a, s) for s in range(self.seeds) for a in pretrained_arms}
            for k in self.run_order():
                for s in self.seeds_now():
                    for structure in self.prof.structures:
                        for arm in self.arms:
                            tasks.append(pool.submit(self.finetune, structure, k, s, arm, checkpoints.get((arm, s))))
            rows: list[dict] = []
            with tqdm(total=len(tasks), desc="fine-tuning runs", dynamic_ncols=True) as bar:
                for fut in tasks:
                    rows.extend(fut.result())
                    bar.update(1)
            for fut in checkpoints.values():
                fut.result()
        return rows


def paired_differences(rows: list[dict]) -> list[dict]:
    """Per tested structure, k and method: mean of (method - scratch) with a two-level bootstrap 95% CI."""
    from nnunetv2_selma.evaluation.stats import paired_difference

    scores: dict[tuple, dict] = {}
    for r in rows:
        scores.setdefault((r["structure"], k_label(r["k"]), r["arm"]), {})[r["seed"]] = r["per_case_dice"]
    out = []
    for (structure, k, arm), by_seed in sorted(scores.items()):
        base = scores.get((structure, k, "scratch"))
        if arm == "scratch" or base is None:
            continue
        d = paired_difference(by_seed, base)
        out.append({"structure": structure, "k": k if k == "all" else int(k), "method": arm,
                    "mean_diff": d["mean_diff"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                    "n_seeds": d["n_repeats"], "n_test_cases": d["n_cases"], "per_seed_diff": d["per_repeat_diff"]})
    return out


def arm_summary(rows: list[dict]) -> dict:
    """(structure, k, arm) -> mean Dice over seeds with a bootstrap 95% CI (seeds, then cases)."""
    from nnunetv2_selma.evaluation.stats import hierarchical_bootstrap_ci

    groups: dict[tuple, list[np.ndarray]] = {}
    for r in rows:
        groups.setdefault((r["structure"], k_label(r["k"]), r["arm"]), []).append(
            np.array(list(r["per_case_dice"].values())))
    return {key: hierarchical_bootstrap_ci(v) for key, v in groups.items()}


def write_table(results: dict, path: Path) -> str:
    summary = arm_summary(results["rows"])
    arms = list(dict.fromkeys(r["arm"] for r in results["rows"]))
    structures = list(dict.fromkeys(r["structure"] for r in results["rows"]))
    ks = label_counts(results["rows"])
    header = ["tested on", "k", *(f"{a} Dice" for a in arms),
              *(f"{a} − scratch [95% CI]" for a in arms if a != "scratch")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paired = {(p["structure"], k_label(p["k"]), p["method"]): p for p in results["paired"]}
    for s in structures:
        for k in ks:
            cells = []
            for a in arms:
                m = summary.get((s, k, a))
                cells.append(f"{m[0]:.3f}" if m else "")
            for a in arms:
                if a == "scratch":
                    continue
                p = paired.get((s, k, a))
                cells.append(f"{p['mean_diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" if p else "")
            lines.append(f"| {s} | {k} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = arm_summary(results["rows"])
    structures = list(dict.fromkeys(r["structure"] for r in results["rows"]))
    arms = list(dict.fromkeys(r["arm"] for r in results["rows"]))
    ks = label_counts(results["rows"])
    n_all = {r["structure"]: r["n_train"] for r in results["rows"] if r["k"] == "all"}
    fig, axes = plt.subplots(1, len(structures), figsize=(4.2 * len(structures), 4), squeeze=False)
    for ax, s in zip(axes[0], structures):
        x = np.arange(len(ks))
        for a in arms:
            vals = [summary.get((s, k, a), (np.nan,) * 3) for k in ks]
            mean = np.array([v[0] for v in vals])
            ax.plot(x, mean, marker="o", label=a)
            ax.fill_between(x, [v[1] for v in vals], [v[2] for v in vals], alpha=0.2)
        ax.set_xticks(x, [f"all ({n_all.get(s, '?')})" if k == "all" else k for k in ks])
        ax.set_xlabel("labelled patches k")
        ax.set_ylabel("held-out Dice")
        ax.set_title(s)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"label efficiency, profile {results['profile']['name']} "
                 f"({results['profile']['seeds']} seeds, bands: bootstrap 95% CI"
                 + ("" if results.get("complete", True) else f"; PARTIAL: {results['runs_done']} runs") + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_record() -> dict:
    """The machine and the command line of this run, for a results file."""
    return {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "command": " ".join(sys.argv)}


def start_study_log(work: Path, profile: str, arms, seeds: int) -> None:
    """Create the work folder and log to ``study.log`` in it and to the console."""
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(work / "study.log"), logging.StreamHandler()])
    logging.getLogger("bench").info("profile %s, arms %s, %d seeds, work %s", profile, arms, seeds, work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    parser.add_argument("--work", default=None, help="working folder (default /tmp/selma_ssl_benefit_<profile>)")
    parser.add_argument("-o", "--output", default=None, help="results .json (default WORK/results.json)")
    parser.add_argument("--arms", nargs="+", default=None, choices=sorted(ARMS), help="override the profile's arms")
    parser.add_argument("--structures", nargs="+", default=None, choices=sorted(STRUCTURES))
    parser.add_argument("--ks", nargs="+", default=None, help="override the label counts (ints and 'all')")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--trainer", default=None,
                        help="fine-tuning trainer for every arm instead of the profile's (runs are kept per trainer)")
    parser.add_argument("--collect", action="store_true",
                        help="no new run: results, table and plot from the runs finished so far (marked partial)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default 1: on 2 cores, two nnU-Net runs oversubscribe the CPU and each "
                             "takes 3-4x longer; parallel runs pay on a machine with many cores)")
    args = parser.parse_args(argv)

    prof = PROFILES[args.profile]
    if args.structures:
        prof = Profile(**{**asdict(prof), "structures": tuple(args.structures)})
    if args.ks:
        prof = Profile(**{**asdict(prof), "ks": tuple(k if k == "all" else int(k) for k in args.ks)})
    if args.trainer:
        prof = Profile(**{**asdict(prof), "trainer": args.trainer})
    arms = tuple(args.arms or prof.arms)
    if "scratch" not in arms:
        parser.error("--arms must include scratch (every difference is paired against it)")
    seeds = args.seeds or prof.seeds
    if seeds < 1 or (args.jobs is not None and args.jobs < 1):
        parser.error("--seeds and --jobs must be >= 1")
    work = Path(args.work or f"/tmp/selma_ssl_benefit_{prof.name}").resolve()
    start_study_log(work, prof.name, arms, seeds)
    t0 = time.perf_counter()
    study = Study(prof, work, arms, seeds, args.jobs or prof.jobs)
    study.prepare()
    if args.collect:
        rows, total = study.collect()
        log.info("collected %d of %d runs (no new run)", len({(r['trained_on'], r['k'], r['arm'], r['seed'])
                                                               for r in rows}), total)
    else:
        rows = study.execute()
        total = None
    runs_done = len({(r["trained_on"], k_label(r["k"]), r["arm"], r["seed"]) for r in rows})
    results = {"profile": {**asdict(prof), "arms": list(arms), "seeds": seeds},
               "complete": total is None or runs_done == total, "runs_done": runs_done, "rows": rows,
               "paired": paired_differences(rows), "timings": {**study.timings, "total": time.perf_counter() - t0},
               **run_record()}
    out = Path(args.output) if args.output else work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    table = write_table(results, out.with_suffix(".md"))
    plot(results, out.with_suffix(".png"))
    print(table)
    print(f"results: {out}  table: {out.with_suffix('.md')}  plot: {out.with_suffix('.png')}  "
          f"({results['timings']['total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
