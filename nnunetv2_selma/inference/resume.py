"""What makes a block-wise run resumable and safe to rerun: the signature of its arguments and inputs.

``predict_large`` and ``objects`` record a signature (arguments, shapes, and a cheap digest of each
input's content) beside a partial run and a finished output. A rerun with the same signature resumes or
returns; another one is refused without overwriting anything, and an input whose content changed
raises :class:`InputChangedError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunetv2_selma.volumes import VolumeSource


def describe_existing(path: Path) -> str:
    """What a path that is in the way holds, for a message."""
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        return f"a folder with {len(entries)} entries (e.g. {', '.join(entries[:3])})"
    return f"a file of {path.stat().st_size} bytes"


def signature_mismatch(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two signatures, sorted."""
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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


__all__ = ["CONTENT_SAMPLE_PLANES", "CONTENT_SAMPLE_VOXELS", "InputChangedError", "check_inputs_unchanged",
           "describe_existing", "input_content_signature", "signature_mismatch"]
