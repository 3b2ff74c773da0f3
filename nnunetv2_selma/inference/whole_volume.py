"""Whole-volume (whole-brain) nnU-Net inference with memory bounded by a block, not the volume.

How the result stays identical to ``nnUNetPredictor`` on the whole volume
-------------------------------------------------------------------------
``nnUNetPredictor`` preprocesses a case (transpose, crop to the non-zero bounding box, z-score with
the case's statistics, pad to at least the patch size), places tiles at
``compute_steps_for_sliding_window(padded_shape, patch_size, tile_step_size)``, and sums the
Gaussian-weighted tile predictions in float16, tile after tile in lexicographic order, before
dividing by the summed weights and taking the argmax.

Here the same frame and the same tile grid are computed from the whole volume's shape, its
non-zero bounding box and its intensity statistics (streamed, summed in numpy's order). The padded frame is cut
into *cores* (``block_size``); a block reads the union of the whole-volume tiles that touch its
core (a halo of up to ``patch_size - 1``) and runs nnU-Net's own
``_internal_predict_sliding_window_return_logits`` on exactly those tiles, in the whole-volume
order. Every core voxel then receives the same tile predictions, added in the same order with the
same float16 rounding, so the mask is bit-identical to the whole-volume run (on CPU; on GPU,
cuDNN algorithm choice may differ between processes). The price: tiles that straddle two cores
are computed by both blocks (``BlockPlan.redundancy`` says how many times each tile is computed
on average); larger blocks make it smaller.

Memory: one block region (float32 input, float16 logits and weights), plus one z plane of the
output while the output is assembled. Finished blocks are stored as small compressed ``.b2nd`` files in
``<output>.partial/`` and recorded in ``progress.json`` (atomic writes): a killed run restarted
with the same arguments skips them. On several GPUs or machines, blocks are tasks of
``dask.distributed``.

The jobs are in their own modules: :mod:`~nnunetv2_selma.inference.blocks` (frame, tile grid, blocks),
:mod:`~nnunetv2_selma.inference.volume_statistics` (the streamed statistics),
:mod:`~nnunetv2_selma.inference.predictor` (the model), :mod:`~nnunetv2_selma.inference.block_jobs` (one
block, end to end), :mod:`~nnunetv2_selma.inference.resume` (signatures) and
:mod:`~nnunetv2_selma.inference.dask_executor`; this module runs them (:func:`predict_large`): checks,
the resumable progress record, local or dask execution, output assembly.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.inference.block_jobs import (
    BlockJob,
    block_file,
    job_predictor,
    load_block,
    run_block,
)
from nnunetv2_selma.inference.blocks import Block, BlockPlan, VolumeFrame, default_block_size, plan_blocks
from nnunetv2_selma.inference.dask_executor import run_blocks
from nnunetv2_selma.inference.predictor import CHECKPOINT_REMEDY, check_model_fits_streaming
from nnunetv2_selma.inference.resume import (
    PROGRESS_FILE,
    InputChangedError,
    ResumableRun,
    describe_existing,
    input_content_signature,
)
from nnunetv2_selma.inference.volume_statistics import gather_volume_statistics
from nnunetv2_selma.model_folder import read_model_folder
from nnunetv2_selma.volumes import MultiChannelVolumeError, VolumeSource, create_mask_writer, open_volume
from nnunetv2_selma.volumes.writers import check_output_path, write_blocks

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".predict_large.json"
PARTIAL_SUFFIX = ".partial"

def _assemble_output(writer, frame: VolumeFrame, plan: BlockPlan, blocks_dir: Path, progress: bool,
                     tissue=None) -> None:
    """Write the stored blocks into ``writer``; labels outside ``tissue`` (a ``TissueMask``) become 0."""
    placed = []
    for block in plan.blocks:
        valid = frame.valid(block.core)
        if any(b <= a for a, b in valid):
            continue
        placed.append((frame.to_original(valid), block.index))
    write_blocks(writer, placed, lambda index: load_block(blocks_dir, index),
                 keep=None if tissue is None else tissue.region, progress=progress)


def predict_large(input: str | Path | Sequence[str | Path], output: str | Path, model_folder: str | Path,
                  folds: Sequence[int | str] = (0,), block_size: int | Sequence[int] | None = None,
                  device: str = "cpu", tile_step_size: float = 0.5, use_mirroring: bool = False,
                  workers: int | None = None, scheduler: str | None = None,
                  checkpoint_name: str = "checkpoint_final.pth",
                  intensity_stats: Sequence[Sequence[float]] | None = None, progress: bool = True,
                  tissue_mask: str | Path | None = None) -> Path:
    """Segment a volume of any size with an nnU-Net model, block by block, resumably.

    Parameters
    ----------
    input : path, or one path per channel (``_0000``, ``_0001`` order)
        Folder of 2D TIFF slices, 3D ``.tif``, ``.nii.gz``/``.nii``/``.mha``/``.nrrd``, ``.b2nd`` or
        OME-Zarr (needs ``zarr``). All channels must have one shape.
    output : path
        Kind from the suffix: no suffix = folder of TIFF slices (named like the input slices when the
        input is a slice folder), ``.tif``, ``.b2nd``, ``.nii.gz``, ``.mha``, ``.ome.zarr`` (chunked, with a multiscale
        pyramid for napari / neuroglancer)... uint8 labels.
        Must not exist (or be an empty folder), unless it is the finished output of this very run.
    model_folder : nnU-Net model folder (``Trainer__Plans__Configuration``).
    folds : folds to ensemble (logits averaged as ``nnUNetPredictor`` does).
    block_size : core edge in voxels (int or (z, y, x) in the network's axis order); default: the
        largest multiple of the patch size whose block needs about 2 GB (peak < 3 GB). Larger blocks compute fewer
        tiles twice (``BlockPlan.redundancy``).
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    tile_step_size, use_mirroring : as ``nnUNetPredictor`` (Gaussian weighting is always on).
    workers : start a local ``dask.distributed`` cluster with this many worker processes (one GPU each
        with ``device="cuda"``). ``scheduler`` : address of an existing dask scheduler instead (the
        workers must see the input, the model folder and the output's parent folder).
    checkpoint_name : checkpoint file in each ``fold_X``.
    intensity_stats : ``[(mean, std)]`` per channel to use instead of measuring them.
    progress : show progress bars (voxels/s, time left).
    tissue_mask : ``None``/``"none"`` (default here: the labels equal ``nnUNetPredictor``'s), ``"auto"``
        (the command line's default: ingest's low-resolution tissue mask of the input, dilated by one mask
        voxel, see :mod:`nnunetv2_selma.inference.tissue_mask`; it removes only a clearly dark outside, keeps
        everything in a volume that is tissue everywhere, and keeps objects touching the tissue whole) or the
        path of a mask volume (non-zero = tissue, the input's shape or smaller by a whole factor per axis;
        labels outside it are set to 0 voxel by voxel). The record's ``tissue_mask`` says what was kept.

    Returns
    -------
    Path of the output. Next to it, ``<output>.predict_large.json`` records how it was made, with the
    seconds of each phase of each run (``runs[i]["seconds"]``: ``statistics``, ``model_load``,
    ``predict``, ``write``).

    Raises
    ------
    FileExistsError when ``output`` holds something else (nothing is overwritten) or a partial run of
    other arguments sits in ``<output>.partial``; ValueError naming the file for unreadable or
    inconsistent input (bad slice, slices of different sizes, channel shapes differ, an OME-Zarr of several
    channels: how many, and that each is one input) or a model this
    path cannot reproduce (normalisation other than z-score, resampling needed).
    """
    setup = _prepare(input, output, model_folder, folds, block_size, tile_step_size, use_mirroring, workers,
                     scheduler, checkpoint_name, intensity_stats, tissue_mask)
    run = ResumableRun(setup.output.with_name(setup.output.name + PARTIAL_SUFFIX), setup.signature, "output path")
    if _already_predicted(setup, run):
        return setup.output
    timings = {"statistics": 0.0, "model_load": 0.0, "predict": 0.0, "write": 0.0}
    plan, job = _plan(setup, run, device, progress, timings)
    _predict_blocks(setup, run, plan, job, workers, scheduler, progress, timings)
    tissue = _assemble(setup, run, plan, job, progress, timings)
    run.complete(setup.record_path, {"statistics": run.state["statistics"], "blocks": len(plan.blocks),
                                     "block_size": list(plan.block_size), "redundancy": plan.redundancy,
                                     "tissue_mask": {"setting": setup.tissue_setting,
                                                     **(tissue.info if tissue else {})}})
    return setup.output


@dataclass
class _Setup:
    """The checked arguments of a run, its open inputs and model, and its signature."""

    inputs: list[Path]
    output: Path
    record_path: Path
    model_folder: Path
    folds: tuple
    checkpoint_name: str
    sources: list[VolumeSource]
    tissue_setting: str
    given_tissue: object  # a TissueMask given by path, checked before any work; None otherwise
    patch_size: tuple[int, ...]
    transpose_forward: tuple[int, ...]
    block_size: tuple[int, int, int]
    tile_step_size: float
    use_mirroring: bool
    intensity_stats: Sequence[Sequence[float]] | None
    signature: dict


def _prepare(input, output, model_folder, folds, block_size, tile_step_size, use_mirroring, workers, scheduler,
             checkpoint_name, intensity_stats, tissue_mask) -> _Setup:
    """Check the arguments, open the inputs and the model, and make the run's signature; no work yet."""
    inputs = [input] if isinstance(input, (str, Path)) else list(input)
    inputs = [Path(p).resolve() for p in inputs]
    output = Path(output).resolve()
    model_folder = Path(model_folder).resolve()
    folds = tuple(f if f == "all" else int(f) for f in folds)
    check_output_path(output)
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local dask cluster) or scheduler (an existing one), not both")
    _check_run_numbers(block_size, tile_step_size, workers, intensity_stats)

    try:
        sources = [open_volume(p) for p in inputs]
    except MultiChannelVolumeError as e:
        raise ValueError(f"{e}, and give them all, one per channel in the model's channel order (_0000, _0001, "
                         f"...), as the inputs (-i C0.ome.zarr C1.ome.zarr ...); there is no option to pick one "
                         f"channel of a volume") from e
    for p, s in zip(inputs[1:], sources[1:]):
        if s.shape != sources[0].shape:
            raise ValueError(f"{p}: channel of shape {s.shape}; expected {sources[0].shape} like {inputs[0]}")
    tissue_setting = "none" if tissue_mask is None or str(tissue_mask) == "none" else str(tissue_mask)
    given_tissue = None
    if tissue_setting not in ("none", "auto"):
        from nnunetv2_selma.inference.tissue_mask import open_tissue_mask

        given_tissue = open_tissue_mask(tissue_setting, sources[0].shape)  # checked before any work
        tissue_setting = given_tissue.info["path"]
    model = read_model_folder(model_folder, folds, checkpoint_name, CHECKPOINT_REMEDY)
    num_channels = model.num_input_channels
    spacing_zyx = tuple(float(s) for s in sources[0].geometry["spacing"])[::-1]
    transpose_forward = tuple(int(i) for i in model.plans_manager.transpose_forward)
    check_model_fits_streaming(model.configuration_manager, len(sources), num_channels, spacing_zyx,
                               transpose_forward, model_folder)
    patch_size = tuple(int(p) for p in model.configuration_manager.patch_size)
    if block_size is None:
        block_size = default_block_size(patch_size, num_channels, model.label_manager.num_segmentation_heads)
    elif isinstance(block_size, int):
        block_size = (block_size,) * 3
    block_size = tuple(int(b) for b in block_size)

    signature = {
        "inputs": [str(p) for p in inputs], "shape": list(sources[0].shape),
        "dtype": [str(s.dtype) for s in sources], "model_folder": str(model_folder), "folds": list(folds),
        "checkpoint_name": checkpoint_name, "configuration": model.configuration_name, "block_size": list(block_size),
        "tile_step_size": float(tile_step_size), "use_mirroring": bool(use_mirroring),
        "intensity_stats": None if intensity_stats is None else [list(map(float, s)) for s in intensity_stats],
        "input_content": [input_content_signature(s) for s in sources],
    }
    return _Setup(inputs, output, output.with_name(output.name + RECORD_SUFFIX), model_folder, folds,
                  checkpoint_name, sources, tissue_setting, given_tissue, patch_size, transpose_forward, block_size,
                  float(tile_step_size), bool(use_mirroring), intensity_stats, signature)


def _already_predicted(setup: _Setup, run: ResumableRun) -> bool:
    """True when the output is this very run's, finished; FileExistsError when the path holds anything else."""
    output = setup.output
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return False
    record = run.finished_record(setup.record_path, f"the finished output {output}",
                                 f"To predict the new content, remove {output} and {setup.record_path.name}, or "
                                 f"choose another output path.")
    if record is not None and run.matches(record) and \
            record.get("tissue_mask", {}).get("setting", "none") == setup.tissue_setting:
        logger.info("%s: already predicted with these arguments; nothing to do", output)
        return True
    raise FileExistsError(f"{output}: already holds {describe_existing(output)}, not the output of this run; "
                          f"nothing was overwritten. Choose another output path or remove it.")


def _plan(setup: _Setup, run: ResumableRun, device: str, progress: bool, timings: dict) -> tuple[BlockPlan, BlockJob]:
    """Resume the partial run or start one (every plane checked, the statistics streamed), then the frame,
    the blocks and the job every block runs with."""

    def start() -> dict:
        for s in setup.sources:
            s.check_all_planes()
        t0 = time.perf_counter()
        stats = gather_volume_statistics(setup.sources, setup.intensity_stats, progress=progress)
        timings["statistics"] = time.perf_counter() - t0
        (run.work_dir / "blocks").mkdir(parents=True)
        return {"statistics": stats, "done": []}

    state = run.resume_or_start(f"To start fresh on the new content, remove {run.work_dir} and rerun; to resume, "
                                f"restore the original input.", start)
    if run.resumed:
        logger.info("%s: resuming (%d blocks already done)", setup.output, len(state["done"]))
    stats = state["statistics"]
    frame = VolumeFrame.create(setup.sources[0].shape, setup.transpose_forward, stats["bbox"] or [[0, 0]] * 3,
                               setup.patch_size)
    if stats["bbox"] is None:
        plan = BlockPlan((), setup.block_size, 0, 1.0)  # all-zero volume: nnU-Net would see nothing; output is 0
    else:
        plan = plan_blocks(frame.padded_shape, setup.patch_size, setup.tile_step_size, setup.block_size)
    job = BlockJob(tuple(str(p) for p in setup.inputs), tuple(stats["mean"]), tuple(stats["std"]), frame,
                   str(setup.model_folder), setup.folds, setup.checkpoint_name, device, setup.tile_step_size,
                   setup.use_mirroring, str(run.work_dir / "blocks"))
    return plan, job


def _predict_blocks(setup: _Setup, run: ResumableRun, plan: BlockPlan, job: BlockJob, workers, scheduler,
                    progress: bool, timings: dict) -> None:
    """Predict the blocks not stored yet, recording each one done as it is stored."""
    from tqdm import tqdm

    frame = job.frame
    # a block is done when its file is stored, whether recorded in state["done"] or not yet (killed in between)
    done = {b.index for b in plan.blocks if block_file(job.blocks_dir, b.index).is_file()}
    pending = [b for b in plan.blocks if b.index not in done]

    def voxels(block: Block) -> int:
        return math.prod(max(0, b - a) for a, b in frame.valid(block.core))

    run.state["done"] = sorted(done)
    run_info = run.begin_run(computed=0, blocks=len(plan.blocks), redundancy=plan.redundancy, seconds=timings)
    logger.info("%s: %d blocks of %s (tiles computed %.2fx the whole-volume run), %d to do", setup.output,
                len(plan.blocks), setup.block_size, plan.redundancy, len(pending))
    by_index = {b.index: b for b in plan.blocks}
    bar = tqdm(total=sum(voxels(b) for b in plan.blocks), initial=sum(voxels(by_index[i]) for i in done),
               unit="vox", unit_scale=True, desc="predict_large", disable=not progress)

    def finished(index: int) -> None:
        done.add(index)
        run_info["computed"] += 1
        run.state["done"] = sorted(done)
        run.save()
        bar.update(voxels(by_index[index]))

    try:
        if workers is None and scheduler is None and pending:
            t0 = time.perf_counter()
            job_predictor(job)  # load the model here so that its time is reported apart
            timings["model_load"] = time.perf_counter() - t0
        t0 = time.perf_counter()  # on dask, model loading happens on the workers and counts as predicting
        run_blocks(run_block, job, pending, workers, scheduler, finished)
        timings["predict"] = time.perf_counter() - t0
    finally:
        bar.close()


def _assemble(setup: _Setup, run: ResumableRun, plan: BlockPlan, job: BlockJob, progress: bool, timings: dict):
    """Write the stored blocks into the output, masked by the tissue mask when one is asked for; returns the
    tissue mask used (or None)."""
    sources, output, work_dir, frame = setup.sources, setup.output, run.work_dir, job.frame
    blocks_dir = Path(job.blocks_dir)
    tissue = setup.given_tissue
    if setup.tissue_setting == "auto":
        from nnunetv2_selma.inference.tissue_mask import auto_tissue_mask

        t0 = time.perf_counter()
        tissue = auto_tissue_mask(sources)
        timings["tissue_mask"] = time.perf_counter() - t0
        logger.info("%s: tissue mask %.1f%% of the volume; %s", output, 100 * tissue.info["fraction"],
                    tissue.info["outcome"])
    slice_names = sources[0].slice_names()
    t0 = time.perf_counter()
    if tissue is not None and tissue.whole_objects and not tissue.keeps_everything:
        from nnunetv2_selma.inference.tissue_mask import keep_whole_objects

        # the labels unmasked first: which objects touch the mask is known only once all of them are
        tissue_dir = work_dir / "tissue"
        shutil.rmtree(tissue_dir, ignore_errors=True)  # a run killed here left a half pass: redo it
        tissue_dir.mkdir()
        unmasked = tissue_dir / "unmasked.b2nd"
        with create_mask_writer(unmasked, tissue_dir / "unmasked.tmp.b2nd", sources[0].shape,
                                sources[0].geometry) as writer:
            _assemble_output(writer, frame, plan, blocks_dir, progress)
        placed, load, counts = keep_whole_objects(unmasked, tissue, tissue_dir, progress=progress)
        tissue.info.update(counts)
        logger.info("%s: %d of %d objects removed (%d voxels) outside the tissue; %d kept whole across its edge "
                    "(%d voxels outside it)", output, counts["objects_removed"], counts["objects"],
                    counts["voxels_removed"], counts["objects_kept_across_edge"], counts["voxels_kept_outside"])
        with create_mask_writer(output, work_dir / "output", sources[0].shape, sources[0].geometry,
                                slice_names) as writer:
            write_blocks(writer, placed, load, progress=progress)
    else:
        with create_mask_writer(output, work_dir / "output", sources[0].shape, sources[0].geometry,
                                slice_names) as writer:
            _assemble_output(writer, frame, plan, blocks_dir, progress,
                             None if tissue is None or tissue.keeps_everything else tissue)
    timings["write"] = time.perf_counter() - t0
    return tissue


def _check_run_numbers(block_size, tile_step_size, workers, intensity_stats) -> None:
    """Refuse numbers that would make a run loop, divide by zero or make no sense, before any work."""
    sizes = [block_size] if isinstance(block_size, (int, np.integer)) else list(block_size or [])
    if block_size is not None and (len(sizes) not in (1, 3) or any(int(b) != b or b < 1 for b in sizes)):
        raise ValueError(f"block_size {block_size}: expected one integer or three (z, y, x), each >= 1")
    if not (math.isfinite(tile_step_size) and 0 < tile_step_size <= 1):
        raise ValueError(f"tile_step_size {tile_step_size}: expected a number in (0, 1] (nnU-Net's default 0.5)")
    if workers is not None and (int(workers) != workers or workers < 1):
        raise ValueError(f"workers {workers}: expected an integer >= 1")
    for c, pair in enumerate(intensity_stats or []):
        mean, std = (float(v) for v in pair)
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"intensity_stats of channel {c}: mean {mean}, std {std}; expected a finite mean "
                             f"and a finite std > 0")


__all__ = ["PARTIAL_SUFFIX", "PROGRESS_FILE", "RECORD_SUFFIX", "InputChangedError", "predict_large"]
