"""Files and folders written all at once or not at all, with the modes a plain ``open()`` gives.

Every writer of the package that must never leave half a file (block stores, progress records, results,
caches, checkpoints) writes into a temporary sibling and moves it into place in one rename:
:func:`atomic_path` for anything a callee writes to a path, :func:`write_atomic` and
:func:`write_json_atomic` for content held in memory. A reader sees the old file or the new one; a
failed write leaves the old one and no temporary.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def apply_default_mode(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open()`` (or ``mkdir``) would: ``0o666`` (``0o777``) minus the umask.

    ``tempfile.mkstemp``/``mkdtemp`` create private (0600/0700) files so that a temporary is not
    readable while written; a file renamed into place would keep that, and colleagues sharing a
    store, cache or results folder could not read it. Call this on the temporary before the rename.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def discard_path(path: str | Path) -> None:
    """Remove a temporary file or folder if it exists (a failed write's leftovers)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit_path(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary into place in one rename, with the default mode.

    A file replaces an existing ``path``; a folder replaces an existing *empty* folder only (``os.replace``
    refuses a non-empty one, so nothing written by someone else is lost).
    """
    tmp, path = Path(tmp), Path(path)
    directory = tmp.is_dir()
    apply_default_mode(tmp, directory=directory)
    if directory and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path, directory: bool = False, unique: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write into; moved into place when the block ends without error,
    removed when it raises.

    ``directory``: the temporary is a created folder (else a path where nothing exists yet, to be created
    by the callee, so that writers choosing their own format by suffix keep the suffix). ``unique``: a
    name no other process can take (a run writing the same path at the same time); else a fixed name
    ``.<name>.tmp<suffix>`` that a rerun after a crash reuses.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if directory and unique:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    elif unique:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.unlink()  # the callee creates it (some writers refuse an existing file)
    else:
        tmp = path.with_name(f".{path.name}.tmp{suffix}")
        discard_path(tmp)  # a crashed earlier write
        if directory:
            tmp.mkdir()
    try:
        yield tmp
        commit_path(tmp, path)
    except BaseException:
        discard_path(tmp)
        raise


def write_atomic(path: str | Path, content: bytes | str | Callable[[IO[str]], None]) -> None:
    """Write a file all at once or not at all: ``content`` as bytes or text, or ``content(file)`` filling an
    open text file. The file gets the umask's mode, like ``open()``."""
    with atomic_path(path, unique=True) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            with open(tmp, "w", newline="") as f:
                f.write(content)
        else:
            with open(tmp, "w", newline="") as f:
                content(f)


def write_json_atomic(path: str | Path, content, indent: int = 1) -> None:
    """:func:`write_atomic` of ``content`` as JSON (manifests, progress records, results)."""
    write_atomic(path, lambda f: json.dump(content, f, indent=indent))


__all__ = ["apply_default_mode", "atomic_path", "commit_path", "current_umask", "discard_path", "write_atomic",
           "write_json_atomic"]
