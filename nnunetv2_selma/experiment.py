"""What the demo and the benchmark studies share: the real commands run in their own nnU-Net folders.

Both drive the user's commands (``nnUNetv2_selma_convert``, ``nnUNetv2_train``, ...) one after the other, each
with its own log file, in an environment whose ``nnUNet_raw`` / ``nnUNet_preprocessed`` point into a working
folder and whose nnU-Net finds our trainers; and both compare arms on few-label subsets that every arm reads from
the same ``splits_final.json``, so that arm - scratch at one subset differs only in the method.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import write_atomic
from nnunetv2_selma.nnunet_ext import shim_folder

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A command failed; the message names the command, its log file and the log's last lines."""


def console_script(name: str) -> str:
    """Path of a console script installed beside this interpreter (falls back to PATH)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def nnunet_environment(work: Path, device: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every command of a run in ``work``: its own ``nnUNet_raw`` and ``nnUNet_preprocessed``
    (created), two data-augmentation and preprocessing workers unless the caller's environment says otherwise,
    ``torch.compile`` on GPU only, OpenMP threads that sleep while they wait (the CPU is shared with the other
    process of a run), and our trainers on nnU-Net's ``nnUNet_extTrainer`` path. ``nnUNet_results`` is left to
    each arm (one results folder per arm keeps their model folders apart)."""
    env = dict(os.environ if base is None else base)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    env.setdefault("nnUNet_n_proc_DA", "2")
    env.setdefault("nnUNet_def_n_proc", "2")
    env["nnUNet_compile"] = "true" if device == "cuda" else "false"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(shim_folder()), env.get("nnUNet_extTrainer")) if p)
    return env


class CommandRunner:
    """Runs commands with one environment, each writing its output to ``logs/<name>.log``, and adds up the
    seconds per stage (the part of the name before ``__``: ``finetune__nuclei_k1`` counts as ``finetune``).
    Safe to call from several threads."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        logs.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> float:
        log_path = self.logs / f"{name}.log"
        log.info("[%s] %s", name, " ".join(cmd))
        start = time.perf_counter()
        with open(log_path, "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**self.env, **(env or {})})
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            raise StageError(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\nlog: {log_path}\n"
                             f"--- last lines ---\n{tail}")
        with self._lock:
            stage = name.split("__")[0]
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        log.info("[%s] done in %.1f s", name, seconds)
        return seconds


def dataset_folder(root: Path, dataset_id: int) -> Path | None:
    """``root/DatasetXXX_<name>`` of a dataset id, or None when it is not there yet."""
    found = sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    return found[0] if found else None


def labelled_cases(raw_dataset: Path) -> list[str]:
    """The case names of a raw nnU-Net dataset (its ``labelsTr``), sorted."""
    return sorted(p.name[: -len(".nii.gz")] for p in (raw_dataset / "labelsTr").glob("*.nii.gz"))


def draw_labelled(cases: Sequence[str], k: int, key: Sequence[int]) -> list[str]:
    """The k cases one few-label run trains on, drawn without replacement by ``numpy.random.default_rng(key)``
    (the key names the subset: seed, repeat, dataset...), sorted."""
    if k > len(cases):
        raise ValueError(f"a subset of {k} labelled cases needs at least {k}; there are {len(cases)}")
    return sorted(np.random.default_rng(list(key)).choice(list(cases), size=k, replace=False).tolist())


def write_splits(splits_file: Path, splits: list[dict]) -> None:
    """nnU-Net's ``splits_final.json``, written (atomically) only when it differs from the one there, so a resumed
    run keeps the file its earlier folds were trained from."""
    if splits_file.is_file() and json.loads(splits_file.read_text()) == splits:
        return
    write_atomic(splits_file, json.dumps(splits, indent=1))
