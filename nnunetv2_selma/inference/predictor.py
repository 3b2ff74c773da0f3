"""The model of whole-volume inference: nnU-Net's own predictor, run on the whole-volume tiles of one block.

:class:`BlockPredictor` loads ``nnUNetPredictor`` once and calls its sliding-window routine on exactly
the tiles a block is given, in nnU-Net's order, so that each voxel's logits are summed as in the
whole-volume run. :func:`check_model_fits_streaming` refuses, before any work, a model whose
preprocessing the streamed path cannot reproduce.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.model_folder import UNREADABLE_CHECKPOINT, ModelFolderError, unreadable_checkpoint
from nnunetv2_selma.normalization import NORMALIZATION_SCHEME

#: what to do about an unreadable checkpoint, the last sentence of its message
CHECKPOINT_REMEDY = "Copy it again from the training machine (compare its size) or pick another one with -chk."


def check_model_fits_streaming(configuration_manager, num_inputs: int, num_channels: int, spacing_zyx,
                               transpose_forward, model_folder: Path) -> None:
    """Raise ModelFolderError naming the model folder when its normalisation, channels or spacing cannot be streamed."""
    schemes = list(configuration_manager.normalization_schemes)
    if any(s != NORMALIZATION_SCHEME for s in schemes):
        raise ModelFolderError(f"{model_folder}: normalization_schemes {schemes}; whole-volume inference supports "
                         f"{NORMALIZATION_SCHEME} only, the normalisation every network of this package is "
                         f"trained with")
    if any(configuration_manager.use_mask_for_norm):
        raise ModelFolderError(f"{model_folder}: use_mask_for_norm is True; whole-volume inference needs statistics "
                         f"over the whole (cropped) volume, expected use_mask_for_norm False")
    if num_inputs != num_channels:
        raise ModelFolderError(f"{model_folder}: the model takes {num_channels} channel(s); {num_inputs} input "
                         f"volume(s) were given (one per channel, in _0000, _0001 order)")
    spacing = [float(spacing_zyx[i]) for i in transpose_forward]
    target = [float(s) for s in configuration_manager.spacing]
    if len(target) != 3 or any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(spacing, target)):
        raise ModelFolderError(f"{model_folder}: the configuration's spacing is {target}, the input's is {spacing}; "
                         f"whole-volume inference does not resample. Use a model planned at the input's spacing "
                         f"(SELMA plans use spacing 1).")


class BlockPredictor:
    """nnU-Net's ``nnUNetPredictor`` loaded once, run on the tiles of one block at a time.

    Parameters
    ----------
    model_folder, folds, checkpoint_name : as ``nnUNetPredictor.initialize_from_trained_model_folder``.
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    tile_step_size, use_mirroring, use_gaussian : as ``nnUNetPredictor``.
    """

    def __init__(self, model_folder: str | Path, folds: Sequence[int | str] = (0,), device: str = "cpu",
                 tile_step_size: float = 0.5, use_mirroring: bool = False, use_gaussian: bool = True,
                 checkpoint_name: str = "checkpoint_final.pth") -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.device = torch.device(device)
        # nnU-Net prints "perform_everything_on_device=True is only supported for cuda" for any CPU device,
        # even when False is passed: once per process (per dask worker) of noise on stdout
        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                                             use_mirroring=use_mirroring,
                                             perform_everything_on_device=self.device.type == "cuda",
                                             device=self.device, verbose=False, allow_tqdm=False)
        try:
            self.predictor.initialize_from_trained_model_folder(str(model_folder), list(folds), checkpoint_name)
        except UNREADABLE_CHECKPOINT as e:
            paths = ", ".join(str(Path(model_folder) / f"fold_{f}" / checkpoint_name) for f in folds)
            raise unreadable_checkpoint(paths, e, CHECKPOINT_REMEDY) from e
        self.predictor.network = self.predictor.network.to(self.device)
        self.predictor.network.eval()

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.predictor.configuration_manager.patch_size)

    def predict_logits(self, data: np.ndarray, tile_starts: Sequence[Sequence[int]],
                       region_start: Sequence[int]):
        """Float16 logits ``(heads, *data.shape[1:])`` from the given tiles only.

        ``data``: float32 ``(channels, *region)``, normalised. Voxels no tile covers hold NaN.
        Mirrors ``nnUNetPredictor.predict_logits_from_preprocessed_data`` (fold loop, float16 sum,
        autocast on CUDA, thread count) with the whole-volume tiles instead of the block's own grid.
        """
        import torch
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.utilities.helpers import dummy_context, empty_cache

        p = self.predictor
        patch = self.patch_size
        slicers = [tuple([slice(None), *[slice(s - r, s - r + k) for s, r, k in zip(starts, region_start, patch)]])
                   for starts in itertools.product(*tile_starts)]
        tensor = torch.from_numpy(data)
        n_threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, n_threads))
        prediction = None
        try:
            with torch.inference_mode():
                autocast = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" \
                    else dummy_context()
                with autocast:
                    for params in p.list_of_parameters:
                        p.network.load_state_dict(params)
                        if self.device.type == "cuda":
                            try:
                                logits = p._internal_predict_sliding_window_return_logits(tensor, slicers, True)
                            except RuntimeError:
                                empty_cache(self.device)
                                logits = p._internal_predict_sliding_window_return_logits(tensor, slicers, False)
                        else:
                            logits = p._internal_predict_sliding_window_return_logits(tensor, slicers, False)
                        logits = logits.to("cpu")
                        prediction = logits if prediction is None else prediction.add_(logits)
                    if len(p.list_of_parameters) > 1:
                        prediction /= len(p.list_of_parameters)
        finally:
            torch.set_num_threads(n_threads)
        return prediction

    def segment(self, logits_core, max_voxels: int = 2**22) -> np.ndarray:
        """uint8 labels from float16 logits ``(heads, z, y, x)`` exactly as nnU-Net's export does
        (argmax of the float16 numpy array, or the region nonlinearity for region models).

        Done slab by slab along axis 0 (labels are per voxel): argmax returns int64, which for a
        whole core would cost 8 bytes per voxel.
        """
        logits = logits_core.numpy()
        out = np.empty(logits.shape[1:], dtype=np.uint8)
        step = max(1, max_voxels // max(1, math.prod(logits.shape[2:])))
        for z0 in range(0, out.shape[0], step):
            seg = self.predictor.label_manager.convert_logits_to_segmentation(logits[:, z0:z0 + step])
            out[z0:z0 + step] = np.asarray(seg)
        return out


__all__ = ["CHECKPOINT_REMEDY", "BlockPredictor", "check_model_fits_streaming"]
