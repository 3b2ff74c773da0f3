"""Atomic writes: a failed write leaves the old file and no temporary; a folder arrives whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nnunetv2_selma.atomic import atomic_path, current_umask, write_atomic, write_json_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"v": 1})

    def fail(f):
        f.write('{"v": 2, "half')
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_atomic(path, fail)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # like open(), not mkstemp's 0600


@pytest.mark.parametrize("unique", [False, True])
def test_folder_is_moved_into_place_whole(tmp_path: Path, unique: bool):
    final = tmp_path / "blocks"
    with atomic_path(final, directory=True, unique=unique) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and not final.exists()
        for i in range(3):
            (tmp / f"{i}.bin").write_bytes(bytes([i]))
    assert sorted(p.name for p in final.iterdir()) == ["0.bin", "1.bin", "2.bin"]
    assert final.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["blocks"]

    with pytest.raises(OSError):  # a folder holding someone's files is never replaced
        with atomic_path(final, directory=True, unique=unique) as tmp:
            (tmp / "other.bin").write_bytes(b"x")
    assert sorted(os.listdir(final)) == ["0.bin", "1.bin", "2.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["blocks"]
