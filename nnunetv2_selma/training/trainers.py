"""Fine-tuning trainers for nnU-Net: ``nnUNetv2_train D 3d_fullres F -tr nnUNetTrainerSelma -p nnUNetSelmaPlans_M``.

What :class:`nnUNetTrainerSelma` changes compared with ``nnUNetTrainer``:

* **Pretrained weights.** From the environment variable ``nnUNet_selma_pretrained`` (read when the
  trainer initialises) and/or nnU-Net's own ``-pretrained_weights FILE``. Both go through
  :func:`nnunetv2_selma.checkpoints.load_pretrained_weights`: CPU or GPU-saved checkpoints,
  encoder-only checkpoints, a first convolution adapted to another channel count, one summary
  line on the console and every loaded / skipped tensor in the training log file. With both
  given, ``-pretrained_weights`` is loaded last and wins.

  How ``-pretrained_weights`` reaches our loader: ``nnunetv2.run.run_training.maybe_load_checkpoint``
  calls the module-level name ``load_pretrained_weights`` of ``nnunetv2.run.run_training`` right
  after ``trainer.initialize()``. Our ``initialize`` rebinds that one name (in that one module, in
  that process, and in every DDP worker since each one initialises its own trainer) to a
  dispatcher: networks of our trainers use our loader, any other network still gets nnU-Net's
  stock function. No nnU-Net file is changed and nothing happens until one of our trainers runs.
* **Learning rate.** A linear warm-up over the first 5 % of the epochs (at least 1 epoch when
  there are 2 or more) from ``initial_lr / warmup_epochs`` to ``initial_lr``, then nnU-Net's poly
  schedule (exponent 0.9) from ``initial_lr`` to 0 over the remaining epochs. Why: the decoder
  and segmentation heads start random, and their first, large gradients at nnU-Net's full
  SGD learning rate (1e-2, momentum 0.99) would wash out the pretrained encoder features; the
  ramp lets them settle first (Wald et al., nnssl, fine-tune with a warm-up too). The schedule is
  a pure function of the epoch, so ``--c`` resumes it exactly.

Variants follow nnU-Net's naming: ``nnUNetTrainerSelma_<N>epochs`` and the CPU test schedule
``nnUNetTrainerSelma_1epoch_2it`` (1 epoch of 2 training iterations and 1 validation iteration, no test-time mirroring).
"""

from __future__ import annotations

import os
import sys
import weakref

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.optim.lr_scheduler import _LRScheduler

from nnunetv2_selma.checkpoint_io import unwrap_network
from nnunetv2_selma.checkpoints import load_pretrained_weights

__all__ = [
    "PRETRAINED_ENV",
    "WarmupPolyLRScheduler",
    "nnUNetTrainerSelma",
    "nnUNetTrainerSelma_1epoch_2it",
    "nnUNetTrainerSelma_2epochs_2it",
    "nnUNetTrainerSelma_50epochs",
    "nnUNetTrainerSelma_100epochs",
    "nnUNetTrainerSelma_250epochs",
    "nnUNetTrainerSelma_500epochs",
    "nnUNetTrainerSelma_8epochs_25it",
    "nnUNetTrainerSelma_6epochs_25it_noTTA",
    "nnUNetTrainerSelma_6epochs_25it_noTTA_encoderLR0p1",
    "nnUNetTrainerSelma_12epochs_25it_noTTA",
    "nnUNetTrainerSelma_12epochs_25it_noTTA_encoderLR0p1",
]

#: environment variable naming a pretrained checkpoint to load when a Selma trainer initialises
PRETRAINED_ENV = "nnUNet_selma_pretrained"


class WarmupPolyLRScheduler(_LRScheduler):
    """Linear warm-up, then nnU-Net's poly decay; the learning rate is a function of the step only.

    ``lr(s) = initial_lr * (s + 1) / warmup_steps`` for ``s < warmup_steps``, then
    ``initial_lr * (1 - (s - warmup_steps) / (max_steps - warmup_steps)) ** exponent``.
    nnU-Net calls ``step(current_epoch)`` at the start of every epoch.

    Not nnU-Net's ``lr_scheduler/warmup.py``: it has the same two phases (``Lin_incr_LRScheduler``,
    ``PolyLRScheduler_offset``) as two objects the caller swaps at the boundary, while
    ``nnUNetTrainer`` holds one ``lr_scheduler`` and also steps it on ``--c`` from the epoch alone.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int, warmup_steps: int,
                 exponent: float = 0.9, current_step: int | None = None):
        if not 0 <= warmup_steps < max(max_steps, 1):
            raise ValueError(f"warmup_steps must be in [0, max_steps), got {warmup_steps} for max_steps={max_steps}")
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, step: int) -> float:
        """Learning rate of step (epoch) ``step``."""
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / self.warmup_steps
        decay_steps = max(self.max_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / decay_steps, 1.0)
        return self.initial_lr * (1 - progress) ** self.exponent

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self._last_lr


# networks of live Selma trainers -> their trainer, for the -pretrained_weights dispatcher
_TRAINERS_BY_NETWORK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dispatch_pretrained_weights(network, fname, verbose: bool = False):
    """Stand-in for ``nnunetv2.run.run_training.load_pretrained_weights`` (same signature)."""
    trainer = _TRAINERS_BY_NETWORK.get(unwrap_network(network))
    if trainer is None:
        from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as stock

        return stock(network, fname, verbose=verbose)
    trainer.print_to_log_file("-pretrained_weights given on the command line:")
    return trainer.load_pretrained(fname)


def _route_pretrained_weights_option() -> None:
    """Make ``nnUNetv2_train -pretrained_weights`` use our loader for our trainers (see module docstring)."""
    run_training = sys.modules.get("nnunetv2.run.run_training")
    if run_training is not None and run_training.load_pretrained_weights is not _dispatch_pretrained_weights:
        run_training.load_pretrained_weights = _dispatch_pretrained_weights


class nnUNetTrainerSelma(nnUNetTrainer):
    """nnU-Net trainer for fine-tuning from a SELMA pretraining checkpoint (see the module docstring).

    Class attributes ``warmup_fraction`` (0.05) sets the warm-up length and ``encoder_lr_scale`` (1.0)
    the encoder's learning rate relative to the rest; everything else is
    nnU-Net's default (1000 epochs of 250 iterations, SGD 1e-2, Dice + CE, deep supervision).
    """

    warmup_fraction: float = 0.05
    #: learning-rate multiplier of the encoder (stem included) during fine-tuning; 1.0: one rate for all
    encoder_lr_scale: float = 1.0
    #: schedule overrides of the variants (None keeps nnU-Net's 1000 epochs x 250 iterations, 50 val)
    schedule_epochs: int | None = None
    schedule_iterations: int | None = None
    schedule_val_iterations: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net sets its schedule in __init__, so variants override it here (not in the signature,
        # which nnU-Net saves and replays)
        if self.schedule_epochs is not None:
            self.num_epochs = self.schedule_epochs
        if self.schedule_iterations is not None:
            self.num_iterations_per_epoch = self.schedule_iterations
        if self.schedule_val_iterations is not None:
            self.num_val_iterations_per_epoch = self.schedule_val_iterations
        self._selma_resuming = False
        self.pretrained_report: dict | None = None

    @property
    def warmup_epochs(self) -> int:
        """Warm-up length in epochs: ``round(warmup_fraction * num_epochs)``, at least 1, below num_epochs."""
        if self.num_epochs < 2:
            return 0
        return min(max(1, round(self.warmup_fraction * self.num_epochs)), self.num_epochs - 1)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self._parameter_groups(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs)
        self.print_to_log_file(f"Learning rate: linear warm-up over {self.warmup_epochs} epoch(s) to "
                               f"{self.initial_lr}, then poly (exponent 0.9) to 0 at epoch {self.num_epochs}"
                               + (f"; encoder (stem included) at {self.encoder_lr_scale} x that"
                                  if self.encoder_lr_scale != 1.0 else ""))
        return optimizer, scheduler

    def _parameter_groups(self):
        """All parameters at one learning rate, or (``encoder_lr_scale`` != 1) the encoder's in a group of
        their own whose rate the scheduler multiplies by ``encoder_lr_scale``."""
        if self.encoder_lr_scale == 1.0:
            return self.network.parameters()
        # the decoder of dynamic-network-architectures' U-Nets holds a reference to the encoder, so the
        # rest is "every parameter not in the encoder", by identity
        encoder = list(unwrap_network(self.network).encoder.parameters())
        in_encoder = {id(p) for p in encoder}
        rest = [p for p in self.network.parameters() if id(p) not in in_encoder]
        return [{"params": encoder, "lr_scale": self.encoder_lr_scale}, {"params": rest, "lr_scale": 1.0}]

    def initialize(self):
        super().initialize()
        _TRAINERS_BY_NETWORK[unwrap_network(self.network)] = self
        _route_pretrained_weights_option()
        path = os.environ.get(PRETRAINED_ENV)
        if path and not self._selma_resuming:
            self.print_to_log_file(f"{PRETRAINED_ENV}={path}:")
            self.load_pretrained(path)

    def load_pretrained(self, path: str | os.PathLike) -> dict:
        """Load a pretrained checkpoint into the network: a summary on the console and in the training
        log, every tensor in the training log only.

        Returns the report of :func:`nnunetv2_selma.checkpoints.load_pretrained_weights`;
        raises its ``ValueError`` (mismatching tensor with both shapes, nothing loadable, an nnssl
        checkpoint whose adaptation plan differs from these plans' network, a Primus checkpoint).
        """
        if not self.was_initialized:
            self.initialize()
        try:
            # one summary line on the console; the per-tensor report (hundreds of lines) in the log file only
            # the plans' architecture: an nnssl checkpoint's adaptation plan is checked against it
            report = load_pretrained_weights(
                self.network, path, log=self.print_to_log_file,
                detail=lambda line: self.print_to_log_file(line, also_print_to_console=False),
                architecture=self.configuration_manager.configuration.get("architecture"))
        except (ValueError, FileNotFoundError) as e:
            self.print_to_log_file(f"ERROR loading pretrained weights: {e}")
            raise
        self.pretrained_report = report
        return report

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # --c / --val restore a training of ours: its weights must not be replaced by the
        # pretrained checkpoint that initialize() would otherwise load
        self._selma_resuming = True
        super().load_checkpoint(filename_or_checkpoint)


class NoTestTimeMirroring:
    """Mixin of the CPU schedules: no test-time mirroring in nnU-Net's final validation and in predictions with
    the model (training still mirrors as augmentation). On a 2-core CPU the mirrored validation of four 50^3
    patches took longer than the training itself (75 s against 30 s)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # read by the final validation and saved for nnUNetv2_predict
        return rotation, dummy_2d, initial_patch_size, mirror_axes


class nnUNetTrainerSelma_1epoch_2it(NoTestTimeMirroring, nnUNetTrainerSelma):
    """Test schedule for CPUs: 1 epoch of 2 training iterations and 1 validation iteration, no test-time
    mirroring (:class:`NoTestTimeMirroring`: the mirrored final validation was most of a test run's time)."""

    schedule_epochs = 1
    schedule_iterations = 2
    schedule_val_iterations = 1


class nnUNetTrainerSelma_2epochs_2it(nnUNetTrainerSelma):
    """Test schedule that shows the warm-up: 2 epochs (1 warm-up) of 2 training iterations."""

    schedule_epochs = 2
    schedule_iterations = 2
    schedule_val_iterations = 1


class nnUNetTrainerSelma_50epochs(nnUNetTrainerSelma):
    """nnUNetTrainerSelma with 50 epochs (warm-up 2 epochs)."""

    schedule_epochs = 50


class nnUNetTrainerSelma_100epochs(nnUNetTrainerSelma):
    """nnUNetTrainerSelma with 100 epochs (warm-up 5 epochs)."""

    schedule_epochs = 100


class nnUNetTrainerSelma_250epochs(nnUNetTrainerSelma):
    """nnUNetTrainerSelma with 250 epochs (warm-up 12 epochs)."""

    schedule_epochs = 250


class nnUNetTrainerSelma_500epochs(nnUNetTrainerSelma):
    """nnUNetTrainerSelma with 500 epochs (warm-up 25 epochs)."""

    schedule_epochs = 500


class nnUNetTrainerSelma_8epochs_25it(nnUNetTrainerSelma):
    """CPU demo schedule (``nnUNetv2_selma_demo --profile quick``): 8 epochs of 25 iterations,
    5 validation iterations, warm-up 1 epoch."""

    schedule_epochs = 8
    schedule_iterations = 25
    schedule_val_iterations = 5


class nnUNetTrainerSelma_6epochs_25it_noTTA(NoTestTimeMirroring, nnUNetTrainerSelma):
    """CPU study schedule (``benchmarks/bench_ssl_benefit.py --profile cpu``): 6 epochs of 25 iterations,
    5 validation iterations, warm-up 1 epoch, and no test-time mirroring (:class:`NoTestTimeMirroring`)."""

    schedule_epochs = 6
    schedule_iterations = 25
    schedule_val_iterations = 5


class nnUNetTrainerSelma_6epochs_25it_noTTA_encoderLR0p1(nnUNetTrainerSelma_6epochs_25it_noTTA):
    """The CPU study schedule with the pretrained encoder fine-tuned at a tenth of the learning rate of the
    decoder and head (full-rate SGD may wash out what pretraining learnt; this arm measures it)."""

    encoder_lr_scale = 0.1


class nnUNetTrainerSelma_12epochs_25it_noTTA(nnUNetTrainerSelma_6epochs_25it_noTTA):
    """The CPU study schedule twice as long (12 epochs of 25 iterations, warm-up 1 epoch, no test-time
    mirroring): with 150 iterations a fine-tuning run from one or two faint labelled patches sometimes ended
    before its first foreground prediction (Dice 0, training loss still falling), in every arm."""

    schedule_epochs = 12


class nnUNetTrainerSelma_12epochs_25it_noTTA_encoderLR0p1(nnUNetTrainerSelma_12epochs_25it_noTTA):
    """The 12-epoch study schedule with the encoder at a tenth of the decoder's learning rate: keeps close to a
    pretrained encoder whose frozen features probe well (the denoising encoder)."""

    encoder_lr_scale = 0.1
