"""nnU-Net trainers that put self-supervised pretraining in front of fine-tuning, cached by what determines it.

``nnUNetv2_train D 3d_fullres F -tr nnUNetTrainerSelmaMAE -p nnUNetSelmaPlans_M`` first obtains a
pretraining checkpoint of exactly the network it fine-tunes -- from the cache
(:mod:`nnunetv2_selma.pretraining.cache`) when another fold or another structure dataset with the
same plans, store, method and schedule already made one, otherwise by pretraining now -- and then
fine-tunes from it as :class:`~nnunetv2_selma.training.trainers.nnUNetTrainerSelma` does.

Where the unannotated data comes from: the store named by the environment variable
``nnUNet_selma_store``, else the plans entry ``"selma_pretraining_store"`` (a path). When
``nnUNet_selma_pretrained`` names a checkpoint, that checkpoint is used and nothing is pretrained.
``--c`` / ``--val`` never pretrain (the fine-tuning checkpoint holds the weights).

The pretraining schedule is class attributes (``pretraining_*``); a variant is a subclass that
changes them, like nnU-Net's ``nnUNetTrainer_250epochs``.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnunetv2_selma.pretraining.cache import get_or_pretrain
from nnunetv2_selma.pretraining.loop import PretrainingSchedule
from nnunetv2_selma.pretraining.methods import get_method
from nnunetv2_selma.training.trainers import PRETRAINED_ENV, nnUNetTrainerSelma

__all__ = [
    "INIT_ENV",
    "STORE_ENV",
    "STORE_PLANS_KEY",
    "nnUNetTrainerSelmaMAE",
    "nnUNetTrainerSelmaMAE_1epoch_2it",
    "nnUNetTrainerSelmaDenoise",
    "pretraining_store",
]

#: environment variable naming the pretraining store (a folder written by nnUNetv2_selma_ingest)
STORE_ENV = "nnUNet_selma_store"
#: plans entry naming the pretraining store when the environment variable is not set
STORE_PLANS_KEY = "selma_pretraining_store"
#: environment variable naming a checkpoint the trainer flag's pretraining starts from
INIT_ENV = "nnUNet_selma_pretraining_init"


def pretraining_store(trainer) -> str:
    """Path of the store of unannotated volumes a trainer uses: ``nnUNet_selma_store``, else the plans'
    ``selma_pretraining_store``. Raises naming both and the command that writes a store."""
    path = os.environ.get(STORE_ENV) or trainer.plans_manager.plans.get(STORE_PLANS_KEY)
    if not path:
        raise RuntimeError(
            f"{type(trainer).__name__} uses unannotated volumes but no store is named: set the environment "
            f"variable {STORE_ENV} to a store written by nnUNetv2_selma_ingest (or add "
            f"'{STORE_PLANS_KEY}' to the plans)"
            + (f", or set {PRETRAINED_ENV} to an existing pretraining checkpoint"
               if hasattr(trainer, "pretraining_method") else "")
        )
    if not (Path(path) / "manifest.json").is_file():
        raise FileNotFoundError(f"store of unannotated volumes {path} (from {STORE_ENV} / plans) has no "
                                f"manifest.json; run nnUNetv2_selma_ingest -i DOWNLOAD -o {path}")
    return str(path)


class nnUNetTrainerSelmaMAE(nnUNetTrainerSelma):
    """Pretrain with Spark3D-style masked image modelling (cached), then fine-tune.

    Class attributes
    ----------------
    pretraining_method : str
        Name in :data:`nnunetv2_selma.pretraining.methods.METHODS`.
    pretraining_method_params : dict
        Keyword arguments of the method (``block_size`` (None: automatic), ``mask_ratio``, ``sparse_norm`` for
        ``"mae"``).
    pretraining_iterations, pretraining_batch_size, pretraining_learning_rate : schedule;
        ``pretraining_batch_size=None`` takes the plans' batch size.
    pretraining_checkpoint_every, pretraining_num_workers : run settings (not in the cache key).
    pretraining_init : str or None
        Checkpoint to start the pretraining from (domain-adaptive pretraining from an nnssl / OpenMind
        ResEnc-L checkpoint or one of ours); its content fingerprint enters the cache key. None: the
        environment variable ``nnUNet_selma_pretraining_init``, else a random initialisation.
    """

    pretraining_method: str = "mae"
    pretraining_method_params: dict = {"block_size": None, "mask_ratio": 0.75, "sparse_norm": True}
    pretraining_iterations: int = 10000
    pretraining_batch_size: int | None = None
    pretraining_learning_rate: float = 1e-3
    pretraining_checkpoint_every: int = 500
    pretraining_num_workers: int | None = None
    pretraining_init: str | None = None

    def pretraining_start(self) -> str | None:
        """The checkpoint pretraining starts from: ``pretraining_init`` or ``nnUNet_selma_pretraining_init``."""
        return self.pretraining_init or os.environ.get(INIT_ENV) or None

    def pretraining_schedule(self) -> PretrainingSchedule:
        """The schedule the class attributes describe."""
        return PretrainingSchedule(
            iterations=self.pretraining_iterations,
            batch_size=self.pretraining_batch_size or self.configuration_manager.batch_size,
            learning_rate=self.pretraining_learning_rate,
            checkpoint_every=self.pretraining_checkpoint_every,
            num_workers=self.pretraining_num_workers,
        )

    def pretraining_store(self) -> str:
        """Path of the pretraining store (``nnUNet_selma_store`` or the plans' ``selma_pretraining_store``)."""
        return pretraining_store(self)

    def initialize(self):
        if self.was_initialized or self._selma_resuming or os.environ.get(PRETRAINED_ENV):
            # resuming / validating restores fine-tuned weights; an explicit checkpoint wins
            return super().initialize()
        self.print_to_log_file(f"{type(self).__name__}: self-supervised pretraining stage")
        checkpoint = get_or_pretrain(
            self.pretraining_store(),
            self.plans_manager.plans,
            get_method(self.pretraining_method, **self.pretraining_method_params),
            self.pretraining_schedule(),
            configuration=self.configuration_name,
            device=self.device,
            log=self.print_to_log_file,
            init=self.pretraining_start(),
        )
        super().initialize()
        self.print_to_log_file(f"fine-tuning from the pretraining checkpoint {checkpoint}")
        self.load_pretrained(checkpoint)


class nnUNetTrainerSelmaDenoise(nnUNetTrainerSelmaMAE):
    """Same as :class:`nnUNetTrainerSelmaMAE` with the denoising objective (a second method)."""

    pretraining_method = "denoise"
    pretraining_method_params = {"noise_std": 0.5}


class nnUNetTrainerSelmaMAE_1epoch_2it(nnUNetTrainerSelmaMAE):
    """CPU test schedule: 4 pretraining iterations of batch 2, then 1 fine-tuning epoch of 2 iterations
    (the fine-tuning schedule of ``nnUNetTrainerSelma_1epoch_2it``), no final validation."""

    pretraining_iterations = 4
    pretraining_batch_size = 2
    pretraining_checkpoint_every = 2
    pretraining_num_workers = 0
    schedule_epochs = 1
    schedule_iterations = 2
    schedule_val_iterations = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        # the test schedule checks pretraining and caching; nnU-Net's final validation (covered by the
        # integration tests of nnUNetTrainerSelma_1epoch_2it) would double its run time on CPU
        self.print_to_log_file("final validation skipped (test schedule)")
