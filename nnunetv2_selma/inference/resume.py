"""What makes a block-wise run resumable and safe to rerun: :class:`ResumableRun`.

``predict_large`` and ``objects`` record a signature (arguments, shapes, and a cheap digest of each
input's content) in the progress record of a partial run and in the record of a finished output. A rerun
with the same signature resumes or returns; another one is refused without overwriting anything, and an
input whose content changed raises :class:`InputChangedError` naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import discard_path, write_json_atomic
from nnunetv2_selma.volumes import VolumeSource

#: the progress record of a partial run, in its work folder
PROGRESS_FILE = "progress.json"


def describe_existing(path: Path) -> str:
    """What a path that is in the way holds, for a message."""
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        return f"a folder with {len(entries)} entries (e.g. {', '.join(entries[:3])})"
    return f"a file of {path.stat().st_size} bytes"


def signature_mismatch(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two signatures, sorted."""
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def describe_mismatch(old: dict, new: dict, then: str) -> str:
    """The keys that differ between two signatures for a message, each with its two values when they are
    short (``min_voxels (1 in the partial run, 5 now)``; ``then`` names the old one)."""
    parts = []
    for key in signature_mismatch(old, new):
        a, b = json.dumps(old.get(key)), json.dumps(new.get(key))
        parts.append(f"{key} ({a} {then}, {b} now)" if len(a) + len(b) <= 80 else key)
    return ", ".join(parts)


class InputChangedError(ValueError):
    """An input volume differs from the one a partial run or a finished output was computed from."""


#: z planes whose content is hashed into an input's signature, and voxels hashed per plane at most
CONTENT_SAMPLE_PLANES = 5
CONTENT_SAMPLE_VOXELS = 2**20


def input_content_signature(source: VolumeSource) -> dict:
    """What stands for an input's content in the resume signature, cheaply: no full read.

    ``files``: how many files; ``stat``: a digest of every file's name, size and modification time
    (ns), which catches any rewrite by ordinary tools; ``sample``: a digest of the voxels of
    ``CONTENT_SAMPLE_PLANES`` evenly spaced z planes (a central band of at most
    ``CONTENT_SAMPLE_VOXELS`` voxels each), which catches a copy that kept the old times (``cp -p``,
    ``rsync -t``). A change outside the sampled bands with times kept is the one thing not seen.
    """
    import hashlib

    files = source.files()
    stat = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        stat.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    z, y, x = source.shape
    rows = max(1, min(y, CONTENT_SAMPLE_VOXELS // max(1, x)))
    band = slice((y - rows) // 2, (y - rows) // 2 + rows)
    sample = hashlib.blake2b(digest_size=16)
    for plane in sorted({round(i * (z - 1) / max(1, CONTENT_SAMPLE_PLANES - 1)) for i in range(CONTENT_SAMPLE_PLANES)}):
        sample.update(np.ascontiguousarray(source.read((slice(plane, plane + 1), band, slice(0, x)))).tobytes())
    return {"files": len(files), "stat": stat.hexdigest(), "sample": sample.hexdigest()}


def check_inputs_unchanged(recorded: dict, current: dict, what: str, remedy: str) -> None:
    """Raise :class:`InputChangedError` naming the first input whose content signature differs."""
    old_inputs, new_inputs = recorded.get("inputs"), current["inputs"]
    old_content = recorded.get("input_content")
    if old_inputs != new_inputs or old_content == current["input_content"]:
        return  # other inputs altogether: the generic signature message says so
    if not isinstance(old_content, list) or len(old_content) != len(new_inputs):
        raise InputChangedError(f"{what} records no content signature of its input (made by an older version), "
                                f"so it cannot be proven to match {new_inputs[0]}; nothing was resumed. {remedy}")
    for path, old, new in zip(new_inputs, old_content, current["input_content"]):
        if old == new:
            continue
        changes = []
        if old.get("files") != new["files"]:
            changes.append(f"{old.get('files')} files then, {new['files']} now")
        elif old.get("stat") != new["stat"]:
            changes.append("file sizes or modification times differ")
        if old.get("sample") != new["sample"]:
            changes.append("sampled voxels differ")
        raise InputChangedError(f"{path}: input changed since {what} was computed from it ({'; '.join(changes)}); "
                                f"nothing was resumed or overwritten. {remedy}")


class ResumableRun:
    """The partial run in ``work_dir`` of a block-wise command with ``signature``, and its finished record.

    One progress record (:data:`PROGRESS_FILE`) holds the signature, what the command keeps between runs
    (statistics, blocks done) and one entry per run (``runs``); it is rewritten atomically after each
    step, so a run killed at any moment resumes from the last one. :meth:`complete` writes the finished
    record (atomically, the last file written) and removes the work folder. ``place`` names what the
    user chose (``"output path"``, ``"output folder"``) in the messages.
    """

    def __init__(self, work_dir: Path, signature: dict, place: str) -> None:
        self.work_dir, self.signature, self.place = Path(work_dir), signature, place
        self.progress_path = self.work_dir / PROGRESS_FILE
        self.state: dict | None = None
        self.resumed = False  # set by resume_or_start

    def previous_state(self) -> dict | None:
        """The progress record a partial run left, unchecked, or None."""
        return json.loads(self.progress_path.read_text()) if self.progress_path.is_file() else None

    def finished_record(self, record_path: Path, what: str, remedy: str) -> dict | None:
        """The record of a finished output, or None; :class:`InputChangedError` when it was computed from
        inputs of the same names whose content changed since."""
        if not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
        check_inputs_unchanged(record.get("signature", {}), self.signature, what, remedy)
        return record

    def matches(self, record: dict) -> bool:
        """Whether a record (finished or partial) was made with this run's signature."""
        return not signature_mismatch(record.get("signature", {}), self.signature)

    def resume_or_start(self, remedy: str, start: Callable[[], dict],
                        other_run: str = "Rerun with the same arguments to resume, or remove that folder.") -> dict:
        """The progress record of the partial run to resume, or a new one from ``start()``.

        ``start`` runs only for a new run, before the work folder exists: it does the checks that must
        pass before any work (a refused run leaves nothing behind) and returns the record's first fields.
        A partial run of other arguments (the message names each, then ``other_run``: how to proceed), or a
        work folder holding no progress record, is refused.
        """
        state = self.previous_state()
        if state is not None:
            done = f" ({len(state['done'])} blocks done)" if "done" in state else ""
            check_inputs_unchanged(state.get("signature", {}), self.signature,
                                   f"the partial run in {self.work_dir}{done}", remedy)
            if not self.matches(state):
                differ = describe_mismatch(state.get("signature", {}), self.signature, "in the partial run")
                raise FileExistsError(f"{self.work_dir}: holds a partial run with other {differ}; nothing was "
                                      f"overwritten. {other_run}")
            self.state, self.resumed = state, True
            return state
        if self.work_dir.exists():
            raise FileExistsError(f"{self.work_dir}: exists without {PROGRESS_FILE}; it is not a run of this tool. "
                                  f"Remove it or choose another {self.place}.")
        fields = start()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.state = {"signature": self.signature, **fields, "runs": []}
        self.save()
        return self.state

    def discard(self) -> None:
        """Remove the partial run in the work folder (the user chose to start afresh). It is moved aside in one
        rename first, so a run killed meanwhile leaves the whole partial run or none of it."""
        if not self.work_dir.exists():
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{self.work_dir.name}.", suffix=".discarded", dir=self.work_dir.parent))
        os.replace(self.work_dir, aside)
        discard_path(aside)
        self.state, self.resumed = None, False

    def begin_run(self, **fields) -> dict:
        """Record that a run starts (its ``started`` time and ``fields``); the entry is returned to be filled."""
        run_info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        self.state["runs"].append(run_info)
        self.save()
        return run_info

    def save(self) -> None:
        write_json_atomic(self.progress_path, self.state)

    def complete(self, record_path: Path, record: dict) -> None:
        """Write the finished record (``record`` plus the signature and the runs) and remove the work folder."""
        write_json_atomic(record_path, {**record, "signature": self.signature, "runs": self.state["runs"]})
        shutil.rmtree(self.work_dir)


__all__ = ["CONTENT_SAMPLE_PLANES", "CONTENT_SAMPLE_VOXELS", "InputChangedError", "check_inputs_unchanged",
           "describe_existing", "describe_mismatch", "input_content_signature", "signature_mismatch", "PROGRESS_FILE",
           "ResumableRun"]
