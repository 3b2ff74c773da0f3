"""The self-supervised pretraining loop: one function, single process or DDP.

:func:`pretrain` trains exactly the network fine-tuning will use (built from the same plans by
:func:`nnunetv2_selma.network.build_network`, with a 1-channel head) on patches from the
pretraining store, and writes into its output folder:

* ``checkpoint_latest.pth`` every ``checkpoint_every`` iterations: network, optimizer,
  scheduler, grad scaler, iteration, sampler state and loss history (``continue_training``
  resumes from it, on the same patch sequence);
* ``checkpoint_final.pth`` at the end, in nnU-Net's format (``network_weights``), loadable by
  stock ``nnUNetv2_train -pretrained_weights``;
* ``pretraining_log.txt`` and ``progress.png`` (loss curve, learning rate, iteration time).

Optimiser: AdamW (betas 0.9/0.95, weight decay 0.05) with a linear warm-up and cosine decay.
Why not nnU-Net's SGD + poly: reconstruction targets are unbounded regressions whose gradient
scale changes a lot early on; masked-modelling work (MAE, Spark, nnssl's MAE trainers) uses
AdamW with warm-up for that reason, and it converges on short schedules too.

On CUDA: mixed precision (``torch.autocast`` + ``GradScaler``) and ``torch.compile`` decided as
nnU-Net does (on unless ``nnUNet_compile`` is false; never on CPU). With ``num_gpus > 1`` (or
``world_size`` processes on CPU) it follows nnU-Net's ``run_training``: ``torch.multiprocessing``
spawn, one process per device, ``DistributedDataParallel``; NCCL on GPUs, gloo on CPU. The global
batch is split across ranks as nnU-Net splits it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import distributed as dist
from torch import multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nnunetv2_selma.atomic import atomic_path, write_atomic
from nnunetv2_selma.pretraining.data import PretrainingBatches, default_num_workers, make_loader
from nnunetv2_selma.pretraining.methods import PretrainingMethod, get_method

LATEST = "checkpoint_latest.pth"
FINAL = "checkpoint_final.pth"
LOG = "pretraining_log.txt"
PROGRESS = "progress.png"


@dataclass
class PretrainingSchedule:
    """How long and how to optimise. Fields marked as *result-relevant* enter the cache key.

    Attributes
    ----------
    iterations : int
        Optimizer steps (result-relevant).
    batch_size : int
        Global batch size, split across DDP ranks (result-relevant).
    learning_rate, weight_decay : float
        AdamW parameters (result-relevant).
    warmup_fraction : float
        Fraction of ``iterations`` with a linear learning-rate warm-up (result-relevant).
    seed : int
        Seeds network initialisation and the patch sampler (result-relevant).
    structures : list of str or None
        Only sample store volumes of these structures (result-relevant).
    augment : bool
        Light augmentation on/off (result-relevant).
    checkpoint_every : int
        Save ``checkpoint_latest.pth`` every N iterations.
    num_workers : int or None
        Data-loading worker processes (None: ``nnUNet_n_proc_DA`` or ``min(8, cpus - 1)``).
    """

    iterations: int = 10000
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    seed: int = 12345
    structures: list[str] | None = None
    augment: bool = True
    checkpoint_every: int = 500
    num_workers: int | None = None

    #: fields that change how a run is executed, not what it computes
    NOT_IN_KEY: ClassVar[tuple[str, ...]] = ("checkpoint_every", "num_workers")

    def key_dict(self) -> dict[str, Any]:
        """The result-relevant fields (for the cache key and for resume checks)."""
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_IN_KEY}

    def to_dict(self) -> dict[str, Any]:
        """All fields (for logs and ``pretraining_config.json``)."""
        return asdict(self)


def lr_factor(iteration: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate multiplier: linear warm-up from ~0, then cosine decay to 0."""
    warmup = max(1, int(round(warmup_fraction * total)))
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def do_compile(device: torch.device) -> bool:
    """nnU-Net's rule (``nnUNetTrainer._do_i_compile``): on unless ``nnUNet_compile`` is false; never
    on CPU, MPS or Windows."""
    if device.type != "cuda" or os.name == "nt":
        return False
    return os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t")


def plans_patch_size(plans: dict | str | Path, configuration: str) -> tuple[int, ...]:
    """Patch size (z, y, x) of ``configuration`` in the plans (dict or .json path); a malformed plans file
    raises ValueError naming it (see :func:`nnunetv2_selma.model_folder.read_plans_configuration`)."""
    from nnunetv2_selma.model_folder import read_plans_configuration

    return tuple(int(p) for p in read_plans_configuration(plans, configuration)[1].patch_size)


def split_batch_size(global_batch: int, world_size: int) -> list[int]:
    """Per-rank batch sizes summing to ``global_batch`` (as nnU-Net splits it)."""
    if global_batch < world_size:
        raise ValueError(f"batch size {global_batch} is smaller than the number of processes {world_size}")
    return [global_batch // world_size + (1 if r < global_batch % world_size else 0) for r in range(world_size)]


class _Logger:
    """Appends timestamped lines to the log file (rank 0 only) and echoes them through tqdm."""

    def __init__(self, path: Path | None, echo: Callable[[str], Any] | None) -> None:
        self.path = path
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {message}"
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.echo is not None:
            self.echo(line)


def plot_progress(history: dict[str, list[float]], path: Path) -> None:
    """Loss curve like nnU-Net's ``progress.png``: loss (raw and moving average) with the learning
    rate on a second axis, and iteration / data-wait time below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(history["loss"], dtype=float)
    if loss.size == 0:
        return
    it = np.arange(1, loss.size + 1)
    fig, (ax, ax_t) = plt.subplots(2, 1, figsize=(12, 10))
    ax.plot(it, loss, color="b", alpha=0.3, linewidth=1, label="loss")
    window = max(1, min(50, loss.size // 10))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    ax.plot(it[window - 1:], smooth, color="b", linewidth=3, label=f"loss (mean of {window})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reconstruction loss")
    ax2 = ax.twinx()
    ax2.plot(it, history["lr"], color="g", linestyle="--", linewidth=2, label="learning rate")
    ax2.set_ylabel("learning rate")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    ax_t.plot(it, history["iteration_time"], color="b", linewidth=1, label="iteration time [s]")
    ax_t.plot(it, history["data_wait"], color="r", linewidth=1, label="waiting for data [s]")
    ax_t.set_xlabel("iteration")
    ax_t.set_ylabel("seconds")
    ax_t.legend(loc="upper right")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def train_step(
    network: torch.nn.Module,
    method: PretrainingMethod,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    grad_scaler: torch.GradScaler | None,
    device: torch.device,
) -> torch.Tensor:
    """One optimisation step (autocast on CUDA, gradient clipping at 12 as nnU-Net). Returns the
    detached loss on the device (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    amp = torch.autocast(device.type, enabled=True) if device.type == "cuda" else nullcontext()
    with amp:
        loss = method.loss(network, batch)
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
    return loss.detach()


def build_pretraining_network(
    plans: dict | str | Path, configuration: str, method: PretrainingMethod, seed: int
) -> torch.nn.Module:
    """The fine-tuning network with the method's head (1 channel), no deep supervision, seeded init."""
    from nnunetv2_selma.network import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(
            plans, configuration, num_input_channels=1, num_output_channels=method.num_output_channels,
            deep_supervision=False,
        )
    method.attach(network)
    return network


def _run(
    rank: int,
    world_size: int,
    store: Any,
    plans: dict | str,
    configuration: str,
    output_dir: str,
    method_desc: dict,
    schedule: PretrainingSchedule,
    device_type: str,
    continue_training: bool,
    show_progress: bool,
    metadata: dict,
) -> None:
    """Body of one pretraining process (rank ``rank`` of ``world_size``)."""
    # imported here, not at module level: checkpoints pulls in torch._dynamo (about 1 s)
    from nnunetv2_selma.checkpoints import atomic_torch_save, load_pretrained_weights, save_pretrained_checkpoint

    out = Path(output_dir)
    device = _start_process(rank, world_size, device_type)
    log = _Logger(out / LOG if rank == 0 else None, tqdm.write if rank == 0 and show_progress else None)
    method = get_method(method_desc["name"], **{k: v for k, v in method_desc.items() if k != "name"})
    run = _Training.build(plans, configuration, method, schedule, device, rank, world_size, out, metadata, log)
    if not run.resume(continue_training):
        if continue_training and rank == 0:
            # pretrain() already said so on the console; the log file gets it too
            _Logger(out / LOG, None)(f"--continue given but {run.latest} does not exist: starting from iteration 0")
        init = metadata.get("init")
        if init is not None:
            # domain-adaptive pretraining: start from a checkpoint (ours or nnssl's), heads and decoder included
            load_pretrained_weights(run.network, init["path"], log=log if rank == 0 else (lambda *a: None),
                                    architecture=metadata.get("architecture"), whole_network=True)
    if rank == 0:
        log(f"pretraining {method.describe()} on {run.patch_size} patches, schedule {schedule.to_dict()}, "
            f"{world_size} process(es) on {device}, store {metadata.get('store')}")
    run.train(store, show_progress, lambda: atomic_torch_save(run.latest_checkpoint(), run.latest))
    rank_digests = run.check_replicas_identical()
    if rank == 0:
        meta = dict(metadata)
        meta.update({"method": method.name, "method_params": method.params(), "schedule": schedule.key_dict(),
                     "iterations_done": run.iteration, "patch_size": list(run.patch_size),
                     "configuration": configuration,
                     "final_loss": run.history["loss"][-1] if run.history["loss"] else None,
                     "rank_weight_digests": rank_digests})
        save_pretrained_checkpoint(out / FINAL, run.network, meta)
        log(f"saved {out / FINAL}")
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def _start_process(rank: int, world_size: int, device_type: str) -> torch.device:
    """Join the process group (DDP) and pick this rank's device."""
    if world_size > 1:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
    device = torch.device("cuda", rank if world_size > 1 else torch.cuda.current_device()) \
        if device_type == "cuda" else torch.device(device_type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


@dataclass
class _Training:
    """One process's pretraining: the network, its optimiser state, the iteration reached and the history."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    grad_scaler: Any
    method: PretrainingMethod
    schedule: PretrainingSchedule
    patch_size: tuple
    device: torch.device
    rank: int
    world_size: int
    out: Path
    init_fingerprint: Any
    log: Callable[[str], None]
    iteration: int = 0
    history: dict = None

    @classmethod
    def build(cls, plans, configuration, method, schedule, device, rank, world_size, out, metadata, log) -> _Training:
        network = build_pretraining_network(plans, configuration, method, schedule.seed).to(device)
        optimizer = torch.optim.AdamW(network.parameters(), lr=schedule.learning_rate,
                                      weight_decay=schedule.weight_decay, betas=(0.9, 0.95))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: lr_factor(i, schedule.iterations, schedule.warmup_fraction)
        )
        grad_scaler = torch.GradScaler("cuda") if device.type == "cuda" else None
        init = metadata.get("init")
        return cls(network, optimizer, scheduler, grad_scaler, method, schedule,
                   plans_patch_size(plans, configuration), device, rank, world_size, out,
                   init["fingerprint"] if init else None, log,
                   history={"loss": [], "lr": [], "iteration_time": [], "data_wait": []})

    @property
    def latest(self) -> Path:
        return self.out / LATEST

    def _identity(self) -> dict:
        """What a checkpoint must have been written with to be continued."""
        return {"method": self.method.describe(), "schedule": self.schedule.key_dict(),
                "world_size": self.world_size, "init": self.init_fingerprint}

    def resume(self, continue_training: bool) -> bool:
        """Load ``checkpoint_latest.pth`` when continuing and it exists; False when there is none to load."""
        if not (continue_training and self.latest.is_file()):
            return False
        ckpt = torch.load(self.latest, map_location="cpu", weights_only=False)
        expected = self._identity()
        found = {k: ckpt.get(k) for k in expected}
        if found != expected:
            raise ValueError(
                f"{self.latest}: cannot continue, it was written with {found} but this run has {expected}; "
                f"use the same --method/--iterations/--batch-size/--num-gpus/--init or a new output folder"
            )
        self.network.load_state_dict(ckpt["network"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.grad_scaler is not None and ckpt.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(ckpt["grad_scaler"])
        self.iteration = int(ckpt["sampler"]["iteration"])
        self.history = ckpt["history"]
        self.log(f"continuing from {self.latest}: resumed at iteration {self.iteration} of {self.schedule.iterations}")
        return True

    def latest_checkpoint(self) -> dict:
        return {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "sampler": {"seed": self.schedule.seed, "iteration": self.iteration},
            "history": self.history,
            **self._identity(),
        }

    def forward_network(self) -> torch.nn.Module:
        """The network the batches go through: compiled as nnU-Net decides, wrapped in DDP with several ranks."""
        forward_net: torch.nn.Module = self.network
        if do_compile(self.device):
            self.log("Using torch.compile...")
            forward_net = torch.compile(self.network)
        if self.world_size > 1:
            if self.device.type == "cuda":
                forward_net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward_net)
            # the decoder's lower-resolution seg layers are unused without deep supervision
            forward_net = DistributedDataParallel(
                forward_net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        return forward_net

    def train(self, store, show_progress: bool, save_latest: Callable[[], None]) -> None:
        """Train from ``self.iteration`` to the schedule's end; rank 0 saves the latest checkpoint and the
        progress picture every ``checkpoint_every`` iterations and at the end."""
        schedule, rank = self.schedule, self.rank
        forward_net = self.forward_network()
        local_batch = split_batch_size(schedule.batch_size, self.world_size)[rank]
        num_workers = default_num_workers() if schedule.num_workers is None else schedule.num_workers
        dataset = PretrainingBatches(store, self.patch_size, local_batch, self.method, seed=schedule.seed,
                                     start_iteration=self.iteration, rank=rank, structures=schedule.structures,
                                     augment=schedule.augment)
        self.network.train()
        if self.iteration >= schedule.iterations:
            return
        loader = make_loader(dataset, num_workers, pin_memory=self.device.type == "cuda")
        bar = tqdm(total=schedule.iterations, initial=self.iteration, desc="pretraining",
                   disable=not (rank == 0 and show_progress), dynamic_ncols=True)
        t_wait = time.perf_counter()
        for batch in loader:
            t_got = time.perf_counter()
            loss_value = self._step(forward_net, batch)
            t_done = time.perf_counter()
            self.iteration += 1
            for key, value in (("loss", loss_value), ("lr", self.optimizer.param_groups[0]["lr"]),
                               ("iteration_time", t_done - t_wait), ("data_wait", t_got - t_wait)):
                self.history[key].append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if self.iteration % schedule.checkpoint_every == 0 or self.iteration == schedule.iterations:
                self._log_progress()
                if rank == 0:
                    save_latest()
                    plot_progress(self.history, self.out / PROGRESS)
            if self.iteration >= schedule.iterations:
                break
            t_wait = time.perf_counter()
        bar.close()
        del loader

    def _step(self, forward_net: torch.nn.Module, batch: dict) -> float:
        """One optimiser step on ``batch``; the loss (averaged over ranks)."""
        if int(batch["iteration"]) != self.iteration:
            raise RuntimeError(f"sampler out of order: got batch {int(batch['iteration'])}, expected {self.iteration}")
        tensors = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k != "iteration"}
        loss = train_step(forward_net, self.method, tensors, self.optimizer, self.grad_scaler, self.device)
        self.scheduler.step()
        if self.world_size > 1:
            dist.all_reduce(loss)
            loss = loss / self.world_size
        loss_value = float(loss.cpu())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"pretraining loss is {loss_value} at iteration {self.iteration}")
        return loss_value

    def _log_progress(self) -> None:
        every, history = self.schedule.checkpoint_every, self.history
        mean = float(np.mean(history["loss"][-every:]))
        self.log(f"iteration {self.iteration}/{self.schedule.iterations}: loss {mean:.5f} (mean of last "
                 f"{min(every, self.iteration)}), lr {history['lr'][-1]:.2e}, "
                 f"data wait {np.mean(history['data_wait'][-every:]):.3f}s/it")

    def check_replicas_identical(self) -> list[int] | None:
        """With DDP, the weight digest of every rank, which must be one (else RuntimeError); None alone."""
        if self.world_size == 1:
            return None
        # DDP keeps the replicas identical only if every gradient was synchronised: prove it at the end
        mine = torch.tensor([weights_digest(self.network)], dtype=torch.int64, device=self.device)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        rank_digests = [int(t.item()) for t in gathered]
        if len(set(rank_digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: weight digests per rank {rank_digests}; gradients were "
                               f"not synchronised (a bug: please report it with {self.out / LOG})")
        self.log(f"weights identical on all {self.world_size} ranks (digest {rank_digests[0]:#018x})")
        return rank_digests


def weights_digest(network: torch.nn.Module) -> int:
    """A 63-bit digest of every parameter and buffer's bytes (equal digests: bitwise equal weights)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def _check_init(init: str | Path, plans: dict | str, configuration: str, method: PretrainingMethod,
                architecture: dict) -> dict:
    """Load ``init`` once into a throw-away pretraining network (every error before any file is written);
    return what the metadata records about it."""
    from nnunetv2_selma.checkpoints import checkpoint_fingerprint, load_pretrained_weights

    network = build_pretraining_network(plans, configuration, method, seed=0)
    report = load_pretrained_weights(network, init, log=lambda *a: None, architecture=architecture,
                                     whole_network=True)
    return {"path": str(Path(init).resolve()), "fingerprint": checkpoint_fingerprint(init),
            "source": report["source"], "tensors_loaded": len(report["loaded"])}


def _discard_earlier_run(out: Path) -> None:
    """``overwrite``: remove the earlier run's checkpoints and loss picture before any training, so that a
    run stopped before its first checkpoint leaves no earlier run for ``continue_training`` to resume.
    ``checkpoint_latest.pth`` (what continuing reads) goes first, each file in one unlink; the log keeps the
    earlier run's lines and says where the new run begins."""
    removed = [name for name in (LATEST, FINAL, PROGRESS) if (out / name).is_file()]
    for name in removed:
        (out / name).unlink()
    if removed:
        _Logger(out / LOG, None)(f"--overwrite: removed the earlier run's {', '.join(removed)}; starting afresh")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def pretrain(
    store: Any,
    plans: dict | str | Path,
    output_dir: str | Path,
    method: PretrainingMethod | None = None,
    schedule: PretrainingSchedule | None = None,
    configuration: str = "3d_fullres",
    device: str | torch.device = "cuda",
    num_processes: int = 1,
    continue_training: bool = False,
    show_progress: bool = True,
    metadata: dict | None = None,
    init: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Pretrain the plans' network self-supervised on the store; return ``checkpoint_final.pth``.

    Long because of its thirteen parameters, one a line, and their descriptions here; the body is two steps:
    check everything checkable before the output folder is created, then run the loop in one process or several.

    Parameters
    ----------
    store : PretrainingStore or path of a store
    plans : plans dict or path of a plans ``.json`` (the SELMA preset used for fine-tuning)
    output_dir : folder for checkpoints, log and progress plot (created)
    method : default :class:`~nnunetv2_selma.pretraining.methods.MaskedImageModeling` ()
    schedule : default :class:`PretrainingSchedule` ()
    configuration : plans configuration (``"3d_fullres"``)
    device : ``"cuda"``, ``"cpu"`` (or a torch.device)
    num_processes : DDP processes (GPUs on CUDA; gloo processes on CPU). 1: no DDP.
    continue_training : resume from ``output_dir/checkpoint_latest.pth`` when it exists
    show_progress : tqdm bar and echoed log lines
    metadata : extra entries stored in the final checkpoint's ``"selma"`` metadata
    init : checkpoint to start from instead of a random initialisation (domain-adaptive pretraining):
        one of ours, or an nnssl / OpenMind checkpoint whose adaptation plan matches the plans' network
        (checked hyperparameter by hyperparameter). Every tensor whose name and shape match is loaded,
        decoder and reconstruction head included; the first convolution is adapted to the input
        channels. Recorded (with a content fingerprint) in the metadata and in ``checkpoint_latest.pth``.
    overwrite : start afresh even though ``output_dir`` holds the ``checkpoint_final.pth`` or the
        ``checkpoint_latest.pth`` of an earlier run: they (and its ``progress.png``) are removed once the checks
        pass, before training, so a later ``continue_training`` never resumes the earlier run; without it, and
        without ``continue_training``, such a folder is refused before any work. Not with ``continue_training``.

    Returns
    -------
    Path of ``checkpoint_final.pth`` (``{"network_weights": ..., "selma": metadata}``).
    """
    from nnunetv2_selma.store.reader import open_store

    method = method if method is not None else get_method("mae")
    schedule = schedule if schedule is not None else PretrainingSchedule()
    device = torch.device(device)
    out = Path(output_dir)
    plans_arg: dict | str = plans if isinstance(plans, dict) else str(plans)
    # everything checkable is checked before the output folder is created: a failed start leaves nothing
    if continue_training and overwrite:
        raise ValueError(f"{out}: --c (continue the run there) and --overwrite (discard it and start afresh) "
                         f"given together; give one of them.")
    if schedule.iterations < 1 or schedule.checkpoint_every < 1:
        raise ValueError(f"iterations and checkpoint_every must be >= 1, got {schedule.iterations}, "
                         f"{schedule.checkpoint_every}")
    if num_processes > 1 and device.type == "cuda" and torch.cuda.device_count() < num_processes:
        raise ValueError(f"{num_processes} GPUs requested, {torch.cuda.device_count()} visible")
    from nnunetv2_selma.model_folder import read_plans_configuration

    manager, config = read_plans_configuration(plans_arg, configuration)
    architecture = config.configuration["architecture"]
    init_meta = _check_init(init, plans_arg, configuration, method, architecture) if init is not None else None
    store_obj = open_store(store)
    if not store_obj.volumes:
        raise ValueError(f"pretraining store {store} holds no volumes; run nnUNetv2_selma_ingest first")
    if hasattr(store_obj, "check_files"):
        store_obj.check_files(schedule.structures)
    if (out / FINAL).is_file() and not (continue_training or overwrite):
        raise FileExistsError(f"{out / FINAL}: exists, the result of an earlier pretraining run; nothing was "
                              f"overwritten. Choose another -o, pass --c to continue that run, or --overwrite to "
                              f"start afresh and replace it.")
    if (out / LATEST).is_file() and not (continue_training or overwrite):
        # a stopped run's only record: starting afresh would replace it at the first checkpoint
        raise FileExistsError(f"{out / LATEST}: exists, the checkpoint of an earlier pretraining run that did not "
                              f"finish; nothing was overwritten. Pass --c to continue that run, --overwrite to "
                              f"start afresh and replace it, or choose another -o.")
    if continue_training and not (out / LATEST).is_file():
        # nnU-Net's --c does the same (start afresh), but the user must see it, not only the log
        print(f"WARNING: --continue given but {out / LATEST} does not exist: starting from iteration 0",
              file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _discard_earlier_run(out)
    meta = {"store": str(getattr(store_obj, "path", store)), "store_fingerprint": store_obj.fingerprint,
            "architecture": architecture, "plans_name": manager.plans.get("plans_name"), "init": init_meta,
            **(metadata or {})}
    config = {"method": method.describe(), "schedule": schedule.to_dict(), "configuration": configuration,
              "num_processes": num_processes, "device": str(device), **meta}
    write_atomic(out / "pretraining_config.json", lambda f: json.dump(config, f, indent=2, default=str))
    args = (store_obj, plans_arg, configuration, str(out), method.describe(), schedule, device.type,
            continue_training, show_progress, meta)
    if num_processes > 1:
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ["MASTER_PORT"] = str(_free_port())
        # nnU-Net's pattern (spawn) on GPUs; on CPU, fork avoids re-importing torch in every process
        # (torch resets intra-op threads in forked children, so this is safe without CUDA)
        mp.start_processes(_run, args=(num_processes, *args), nprocs=num_processes, join=True,
                           start_method="spawn" if device.type == "cuda" else "fork")
    else:
        _run(0, 1, *args)
    return out / FINAL
