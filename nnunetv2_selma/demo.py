"""The main job: the whole SELMA3D pipeline on generated data, ending in a report a person reads.

Stages, each one the real command a user would type (run as a subprocess with this run's
``nnUNet_*`` folders), in order::

    synthesize -> convert -> ingest -> plan (SELMA preset) -> pretrain (masked image modelling)
    -> fine-tune from scratch and from the pretrained checkpoint (same trainer, same budget)
    -> challenge-style test inputs to nnU-Net names (nnUNetv2_selma_convert --test-inputs)
    -> nnUNetv2_predict on the held-out test structure -> whole-volume block-wise inference
    -> SELMA3D 2024 evaluation -> report.md with a table and pictures

The comparison is set up like the challenge: the networks are fine-tuned on nuclei
(``shannel_cells``) and tested on c-Fos+ cells, a structure and contrast the fine-tuning set does
not contain, scored with the 2024 leaderboard's dot-like metrics (Dice, Betti-0 error).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.evaluation.stats import paired_difference, verdict
from nnunetv2_selma.experiment import (
    CommandRunner,
    StageError,  # noqa: F401  (the demo command reports it)
    console_script,
    draw_labelled,
    labelled_cases,
    nnunet_environment,
    write_splits,
)
from nnunetv2_selma.synthetic.download import write_download, write_test_inputs
from nnunetv2_selma.synthetic.pictures import projection_panels, save_mip_picture
from nnunetv2_selma.volumes.images import read_image, strip_image_suffix

log = logging.getLogger("nnunetv2_selma.demo")

#: dataset id the demo converts the nuclei subset into (its own nnUNet_raw, so no clash)
DEMO_DATASET_ID = 701
FINETUNE_SUBSET = "shannel_cells"
TEST_STRUCTURE = "cfos"


@dataclass(frozen=True)
class DemoProfile:
    """Sizes and budgets of one demo run."""

    name: str
    preset: str  # SELMA plans preset (training/planner.py)
    patch_scale: float  # annotated patches = real 2024 shapes x this
    cases: int  # annotated patches per subset
    unannotated_shape: tuple[int, int, int]  # each unannotated volume (z, y, x)
    unannotated_per_structure: int
    test_cases: int  # c-Fos test inputs
    test_shape: tuple[int, int, int]
    pretrain_iterations: int
    pretrain_batch: int
    finetune_trainer: str  # same trainer (same budget) for both arms
    folds: tuple[int, ...]  # each fold is one repeat of the comparison
    labelled: int  # labelled patches each repeat fine-tunes on (drawn per repeat); 0: nnU-Net's 5-fold split
    block: tuple[int, int, int]  # whole-volume inference block
    description: str


PROFILES: dict[str, DemoProfile] = {
    p.name: p
    for p in (
        DemoProfile("smoke", "cpu", 0.16, 5, (48, 96, 96), 1, 2, (32, 48, 48), 4, 2,
                    "nnUNetTrainerSelma_1epoch_2it", (0,), 2, (32, 48, 48),
                    "seconds-scale check of every stage (used by the tests)"),
        DemoProfile("quick", "cpu", 0.2, 8, (64, 128, 128), 1, 6, (48, 64, 64), 300, 4,
                    "nnUNetTrainerSelma_6epochs_25it_noTTA", (0, 1, 2), 2, (32, 128, 128),
                    "whole pipeline in about 15 minutes on a 2-core CPU; few labels (2 patches per repeat)"),
        DemoProfile("full", "M", 1.0, 12, (256, 512, 512), 2, 12, (100, 100, 100), 5000, 2,
                    "nnUNetTrainerSelma_100epochs", (0, 1, 2), 4, (256, 256, 256),
                    "sized for one GPU (hours)"),
    )
}


def write_few_label_splits(raw_dataset: Path, splits_file: Path, labelled: int, repeats: Sequence[int],
                           seed: int) -> list[dict]:
    """nnU-Net's ``splits_final.json`` for a few-label comparison: fold r trains on ``labelled`` cases
    drawn with ``(seed, r)`` and validates on all the others. Both arms read the same file, so repeat r
    fine-tunes the same patches in both."""
    cases = labelled_cases(raw_dataset)
    if len(cases) <= labelled:
        raise ValueError(f"{raw_dataset}: {len(cases)} labelled cases; a few-label split of {labelled} needs more")
    splits = [{"train": [], "val": []} for _ in range(max(repeats) + 1)]
    for r in repeats:
        train = draw_labelled(cases, labelled, (seed, r))
        splits[r] = {"train": train, "val": [c for c in cases if c not in train]}
    write_splits(splits_file, splits)
    return splits


def run_demo(out_dir: str | Path = "selma_demo", profile: str = "quick", device: str = "cpu",
             seed: int = 0, keep: bool = False) -> Path:
    """Run the whole pipeline on generated data and write ``<out_dir>/report.md``.

    Parameters
    ----------
    out_dir : folder for everything the run makes (download, nnU-Net folders, store, results).
        An existing folder is replaced unless ``keep`` (then finished stages are redone anyway:
        the demo is cheap to rerun; each stage's own command is what resumes).
    profile : key of :data:`PROFILES` (``smoke``, ``quick``, ``full``).
    device : ``cpu`` or ``cuda``.
    seed : seed of the synthetic data.

    Returns
    -------
    Path of ``report.md``.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown demo profile {profile!r}; expected one of {sorted(PROFILES)}")
    out = Path(out_dir).resolve()
    if out.exists() and not keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    demo = _Demo(out, PROFILES[profile], device, seed)
    test_images = demo.synthesize()
    demo.prepare_datasets()
    checkpoint = demo.pretrain()
    cases = {strip_image_suffix(p): p for p in test_images}
    results = demo.finetune_and_evaluate({"scratch": None, "pretrained": checkpoint})
    volume_dir, volume_out = demo.predict_whole_volume(results["pretrained"]["model_folder"])
    demo.timings["total"] = time.perf_counter() - t_start
    report = write_report(out, demo.prof, device, results, cases, demo.test_dir, demo.pretrain_dir, volume_dir,
                          volume_out, demo.timings)
    log.info("report: %s (%.0f s in all)", report, demo.timings["total"])
    return report


class _Demo:
    """The stages of one demo run, in the order :func:`run_demo` calls them; each runs the real command."""

    def __init__(self, out: Path, prof: DemoProfile, device: str, seed: int):
        self.out, self.prof, self.device, self.seed = out, prof, device, seed
        self.folders = {k: out / k for k in ("nnUNet_raw", "nnUNet_preprocessed")}
        self.run = CommandRunner(out / "logs", nnunet_environment(out, device))
        self.timings = self.run.timings
        self.download = out / "download"
        self.test_dir = out / "test_inputs"
        self.store = out / "store"
        self.pretrain_dir = out / "pretraining"
        self.dataset_name = self.plans_name = ""
        self.plans_file = Path()

    def synthesize(self) -> list[Path]:
        """A SELMA3D-like download (challenge layout) and held-out c-Fos test inputs; returns the test images."""
        t, prof = time.perf_counter(), self.prof
        write_download(self.download, layout="challenge", cases_per_subset=prof.cases, patch_scale=prof.patch_scale,
                       unannotated_shape=prof.unannotated_shape,
                       unannotated_per_structure=prof.unannotated_per_structure, seed=self.seed, test_inputs=False)
        test_images = write_test_inputs(self.test_dir, structures=(TEST_STRUCTURE,),
                                        cases_per_structure=prof.test_cases, shape=prof.test_shape, seed=self.seed + 1)
        self.timings["synthesize"] = time.perf_counter() - t
        return test_images

    def prepare_datasets(self) -> None:
        """Annotated nuclei patches -> nnU-Net raw dataset; unannotated volumes -> pretraining store; SELMA
        plans preset + nnU-Net preprocessing; the few-label splits."""
        # imported here: the planner loads nnU-Net and torch (about 10 s), which `nnUNetv2_selma_demo --help`
        # does not need
        from nnunetv2_selma.training.planner import plans_identifier

        prof, raw, preprocessed = self.prof, self.folders["nnUNet_raw"], self.folders["nnUNet_preprocessed"]
        self.run("convert", [console_script("nnUNetv2_selma_convert"), "-i", str(self.download), "-o", str(raw),
                             "--subsets", FINETUNE_SUBSET, "--ids", f"{FINETUNE_SUBSET}={DEMO_DATASET_ID}"])
        self.run("ingest", [console_script("nnUNetv2_selma_ingest"), "-i", str(self.download), "-o", str(self.store),
                            "-np", "2"])
        self.run("plan", [console_script("nnUNetv2_selma_plan"), "-d", str(DEMO_DATASET_ID), "--preset", prof.preset,
                          "-np", "2"])
        self.plans_name = plans_identifier(prof.preset)
        self.dataset_name = next(p.name for p in preprocessed.iterdir()
                                 if p.name.startswith(f"Dataset{DEMO_DATASET_ID}_"))
        self.plans_file = preprocessed / self.dataset_name / f"{self.plans_name}.json"
        if prof.labelled:
            write_few_label_splits(raw / self.dataset_name, preprocessed / self.dataset_name / "splits_final.json",
                                   prof.labelled, prof.folds, self.seed)

    def pretrain(self) -> Path:
        """Self-supervised pretraining on the store (masked image modelling), same network as fine-tuning."""
        prof = self.prof
        self.run("pretrain", [console_script("nnUNetv2_selma_pretrain"), "--store", str(self.store), "--plans",
                              str(self.plans_file), "-o", str(self.pretrain_dir), "--iterations",
                              str(prof.pretrain_iterations), "--batch-size", str(prof.pretrain_batch), "--device",
                              self.device, "--no-progress", "--checkpoint-every",
                              str(max(prof.pretrain_iterations // 4, 1))])
        return self.pretrain_dir / "checkpoint_final.pth"

    def finetune_and_evaluate(self, arms: dict[str, Path | None]) -> dict[str, dict]:
        """Fine-tune every arm with the same trainer (same budget), each in its own results folder; predict
        the held-out c-Fos inputs with nnU-Net's own predictor and score them (SELMA3D 2024 metrics)."""
        # challenge-style inputs (cfos_001.mha, .tif) -> CASE_0000.nii.gz, the names nnUNetv2_predict finds
        test_nnunet = self.out / "test_inputs_nnunet"
        self.run("test_inputs", [console_script("nnUNetv2_selma_convert"), "--test-inputs",
                                 str(self.test_dir / "images"), "-o", str(test_nnunet)])
        results: dict[str, dict] = {}
        for arm, weights in arms.items():
            model_folder = self.out / f"nnUNet_results_{arm}" / self.dataset_name / \
                f"{self.prof.finetune_trainer}__{self.plans_name}__3d_fullres"
            results[arm] = {"folds": {}, "model_folder": model_folder}
            for fold in self.prof.folds:
                results[arm]["folds"][fold] = self._fold(arm, weights, fold, test_nnunet, model_folder)
        return results

    def _fold(self, arm: str, weights: Path | None, fold: int, test_nnunet: Path, model_folder: Path) -> dict:
        prof, device = self.prof, self.device
        arm_env = {"nnUNet_results": str(self.out / f"nnUNet_results_{arm}")}
        cmd = [console_script("nnUNetv2_train"), str(DEMO_DATASET_ID), "3d_fullres", str(fold),
               "-tr", prof.finetune_trainer, "-p", self.plans_name, "-device", device]
        if weights is not None:
            cmd += ["-pretrained_weights", str(weights)]
        self.run(f"finetune_{arm}", cmd, env=arm_env)
        pred_dir = self.out / "predictions" / arm / f"fold_{fold}"
        self.run(f"predict_{arm}", [console_script("nnUNetv2_predict"), "-i", str(test_nnunet), "-o", str(pred_dir),
                                    "-d", str(DEMO_DATASET_ID), "-c", "3d_fullres", "-f", str(fold),
                                    "-tr", prof.finetune_trainer, "-p", self.plans_name, "-device", device,
                                    "--disable_progress_bar", *_predict_speed_flags(device)], env=arm_env)
        eval_json = self.out / "evaluation" / f"{arm}_fold_{fold}.json"
        eval_json.parent.mkdir(parents=True, exist_ok=True)
        self.run(f"evaluate_{arm}", [console_script("nnUNetv2_selma_evaluate"), "-ref", str(self.test_dir / "masks"),
                                     "-pred", str(pred_dir), "--edition", "2024", "-o", str(eval_json),
                                     "--no-progress"])
        return {"evaluation": json.loads(eval_json.read_text()),
                "validation": _validation_dice(model_folder / f"fold_{fold}"),
                "predictions": pred_dir}

    def predict_whole_volume(self, model_folder: Path) -> tuple[Path, Path]:
        """Whole-volume inference, block by block, on an unannotated c-Fos volume; returns input and output."""
        volume_dir = self.download / "unannotated_cfos" / "sample_1" / "C00"
        volume_out = self.out / "whole_volume" / "cfos_sample_1_mask.b2nd"
        volume_out.parent.mkdir(parents=True, exist_ok=True)
        self.run("predict_large", [console_script("nnUNetv2_selma_predict_large"), "-i", str(volume_dir), "-o",
                                   str(volume_out), "-m", str(model_folder), "-f", str(self.prof.folds[0]),
                                   "--block", *map(str, self.prof.block), "-device", self.device])
        return volume_dir, volume_out


def _predict_speed_flags(device: str) -> list[str]:
    """On a CPU, one pre-/post-processing worker and no mirroring (8x fewer network passes):
    the demo's CPU budget, said in the report; on a GPU, nnU-Net's defaults."""
    return ["-npp", "1", "-nps", "1", "--disable_tta"] if device == "cpu" else []


def _validation_dice(fold_dir: Path) -> float | None:
    """Foreground Dice of nnU-Net's own validation of a fold (on the fine-tuning structure)."""
    summary = fold_dir / "validation" / "summary.json"
    if not summary.exists():
        return None
    return float(json.loads(summary.read_text())["foreground_mean"]["Dice"])


def _validation_per_case(fold_dir: Path) -> dict[str, float]:
    """Per-case foreground Dice of nnU-Net's own validation of a fold (label 1)."""
    summary = fold_dir / "validation" / "summary.json"
    if not summary.exists():
        return {}
    rows = json.loads(summary.read_text())["metric_per_case"]
    return {Path(r["reference_file"]).name.split(".")[0]: float(r["metrics"]["1"]["Dice"]) for r in rows}


def paired_comparisons(results: dict) -> dict[str, dict]:
    """pretrained - scratch per repeat and case, on the c-Fos test and on nnU-Net's nuclei validation."""
    def scores(arm: str, which: str) -> dict:
        folds = results[arm]["folds"]
        if which == "test":
            return {f: {c: float(v["dice"]) for c, v in folds[f]["evaluation"]["cases"].items()} for f in folds}
        return {f: _validation_per_case(results[arm]["model_folder"] / f"fold_{f}") for f in folds}

    return {"c-Fos test (unseen structure)": paired_difference(scores("pretrained", "test"), scores("scratch", "test")),
            "nuclei validation (held-out patches)": paired_difference(scores("pretrained", "validation"),
                                                                      scores("scratch", "validation"))}


def _mean_metric(arm_result: dict, key: str) -> tuple[float, float]:
    values = [f["evaluation"]["aggregates"][key] for f in arm_result["folds"].values()]
    return float(np.mean(values)), float(np.std(values))


def write_report(out: Path, prof: DemoProfile, device: str, results: dict, cases: dict, test_dir: Path,
                 pretrain_dir: Path, volume_dir: Path, volume_out: Path, timings: dict) -> Path:
    """Write ``report.md`` with the comparison table, the stage timings and the pictures."""
    paired = paired_comparisons(results)
    lines = _comparison_lines(prof, device, results, cases, paired)
    lines += _picture_lines(out / "figures", prof, results, cases, test_dir, pretrain_dir, volume_dir, volume_out)
    lines += ["## Stage timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "Profile settings:", "", "```json", json.dumps(asdict(prof), indent=1), "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(
        {"profile": asdict(prof), "device": device, "timings": timings, "paired": paired,
         "arms": {arm: {str(f): {"aggregates": v["evaluation"]["aggregates"], "validation_dice": v["validation"]}
                        for f, v in res["folds"].items()} for arm, res in results.items()}}, indent=1))
    return report


def _comparison_lines(prof: DemoProfile, device: str, results: dict, cases: dict, paired: dict) -> list[str]:
    """The report's comparison: one row per arm, the paired differences, and what they do not show."""
    lines = [f"# nnunetv2-selma demo report ({prof.name} profile, {device})", "",
             f"Profile: {prof.description}. Preset `{prof.preset}`, fine-tuning trainer "
             f"`{prof.finetune_trainer}` for both arms, repeats (folds) {list(prof.folds)}"
             + (f" of {prof.labelled} labelled patches each" if prof.labelled else "") + ", "
             f"{prof.pretrain_iterations} pretraining iterations (batch {prof.pretrain_batch}).", "",
             "## Scratch versus self-supervised pretraining", "",
             f"Fine-tuned on synthetic nuclei (`{FINETUNE_SUBSET}`), tested on {len(cases)} synthetic c-Fos "
             "inputs (a structure and contrast absent from fine-tuning, as in SELMA3D 2024), scored with the "
             "2024 leaderboard's dot-like metrics.", "",
             "| arm | cfos_dice | cfos_betti_error_0 | validation Dice (nuclei, nnU-Net) |",
             "|---|---|---|---|"]
    for arm, res in results.items():
        dice_m, dice_s = _mean_metric(res, "cfos_dice")
        b0_m, b0_s = _mean_metric(res, "cfos_betti_error_0")
        vals = [f["validation"] for f in res["folds"].values() if f["validation"] is not None]
        val = f"{np.mean(vals):.3f}" if vals else "n/a"
        spread = len(res["folds"]) > 1
        lines.append(f"| {arm} | {dice_m:.3f}" + (f" ± {dice_s:.3f}" if spread else "")
                     + f" | {b0_m:.2f}" + (f" ± {b0_s:.2f}" if spread else "") + f" | {val} |")
    few = f"{prof.labelled} labelled patches per repeat" if prof.labelled else "nnU-Net's 5-fold split"
    lines += ["", f"### Paired difference, pretrained − scratch ({few}, {len(prof.folds)} repeat(s))", "",
              "| scored on | mean difference | 95% CI | per repeat |", "|---|---|---|---|"]
    for what, d in paired.items():
        per = ", ".join(f"{v:+.3f}" for v in d["per_repeat_diff"].values())
        lines.append(f"| {what} | {d['mean_diff']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {per} |")
    lines += ["", "Differences are taken per repeat and test case (each repeat fine-tunes both arms on the same "
              "patches); the interval is a two-level bootstrap over repeats and cases. "
              + verdict(paired["c-Fos test (unseen structure)"]), "",
              "What this does and does not show: both arms use the same trainer, schedule, data and test set; "
              "only the initial weights differ. nnU-Net's training is not seeded, so each repeat also carries "
              "training noise. The data are synthetic: the numbers show how the arms compare here, not on real "
              "SELMA3D data. `benchmarks/bench_ssl_benefit.py` is the study across structures, label counts and "
              "seeds." + (" Test-time mirroring is off on CPU to fit the budget." if device == "cpu" else ""),
              "", "Which arm to use: scratch (`nnUNetTrainerSelma`) stays the default. Pretraining alone was level "
              "with scratch across the label-efficiency study. On the acquisition-domain benchmark "
              "(`benchmarks/bench_unannotated_benefit.py`, two labelled patches, 5-7 seeds) it depends on where "
              "the volumes to segment were imaged. From the same spread of conditions as the labelled ones, the "
              "new domains cost scratch nothing and no arm gains (a gain on one draw did not carry to the next). "
              "From another lab (`--domain-shift`: blurred, brighter, larger objects; the new domains cost scratch "
              "0.11-0.50 Dice), pseudo-labels on the store with restyled copies of the labelled patches "
              "(`nnUNetTrainerSelmaSemiPLStyleCopies`) gain nuclei +0.14 and c-Fos +0.13 over two pre-registered "
              "fresh draws, both CIs above 0 (+0.15 each on the draw it was chosen on; benchmarks/RESULTS.md, the "
              "README says which to try when). "
              "This comparison shows the pretrained arm because it is the one the demo's "
              "data can run in minutes; read its difference with that in mind.",
              "", "The whole-volume run uses `--tissue-mask auto` (the default): where the volume has a clearly dark "
              "outside, objects with no voxel in the dilated tissue mask are removed (objects touching it are kept "
              "whole), since fine-tuning patches never show the black outside of a sample; a volume without one "
              "keeps every label.", ""]
    return lines


def _picture_lines(figures: Path, prof: DemoProfile, results: dict, cases: dict, test_dir: Path,
                   pretrain_dir: Path, volume_dir: Path, volume_out: Path) -> list[str]:
    """Pretraining loss curve, nnU-Net progress plots, test case MIPs, whole-volume MIP: saved under
    ``figures``, returned as the report's lines."""
    figures.mkdir(exist_ok=True)
    lines = ["## Pictures", ""]
    if (pretrain_dir / "progress.png").exists():
        shutil.copy(pretrain_dir / "progress.png", figures / "pretraining_progress.png")
        lines += ["### Pretraining loss", "", "![pretraining](figures/pretraining_progress.png)", ""]
    for arm, res in results.items():
        src = res["model_folder"] / f"fold_{prof.folds[0]}" / "progress.png"
        if src.exists():
            shutil.copy(src, figures / f"finetune_{arm}_progress.png")
            lines += [f"### Fine-tuning, {arm}", "", f"![{arm}](figures/finetune_{arm}_progress.png)", ""]
    panels = []
    for case in list(cases)[:2]:
        image, _ = read_image(cases[case])
        gt, _ = read_image(next((test_dir / "masks").glob(f"{case}.*")))
        panels.append((f"{case} image + ground truth", image.max(0), gt.max(0) > 0))
        for arm, res in results.items():
            pred_file = res["folds"][prof.folds[0]]["predictions"] / f"{case}.nii.gz"
            pred, _ = read_image(pred_file)
            panels.append((f"{case} {arm} prediction", image.max(0), pred.max(0) > 0))
    save_mip_picture(figures / "test_predictions.png", panels, ncols=1 + len(results),
                     title="c-Fos test inputs: max-intensity projections, mask outlined")
    lines += ["### Test predictions", "", "![test predictions](figures/test_predictions.png)", ""]
    try:
        import blosc2

        from nnunetv2_selma.volumes import open_volume

        series = open_volume(volume_dir)
        volume = series.read_planes(0, series.shape[0])
        mask = blosc2.open(str(volume_out))[:]
        save_mip_picture(figures / "whole_volume.png", projection_panels("whole volume", [volume], mask > 0),
                         ncols=2, title=f"block-wise inference of {strip_image_suffix(volume_dir.parent.parent)}")
        lines += ["### Whole-volume inference (block-wise)", "", "![whole volume](figures/whole_volume.png)", ""]
    except Exception as e:  # a picture must never hide the report
        log.warning("whole-volume picture skipped: %s", e)
    return lines
