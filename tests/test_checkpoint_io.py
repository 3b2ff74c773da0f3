"""Checkpoint files: shared tensors stored once, partial views not dragging their whole storage along."""

from __future__ import annotations

import os

import torch
from torch import nn

from nnunetv2_selma.checkpoint_io import (
    atomic_torch_save,
    cpu_state_dict,
    read_checkpoint,
)


def unique_tensor_bytes(state_dict) -> int:
    """Bytes of the distinct tensor views of a state dict (what a checkpoint of it needs, about)."""
    views = {(v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride()):
             v.numel() * v.element_size() for v in state_dict.values()}
    return sum(views.values())


class _Wrapped(nn.Module):
    """A network whose encoder is reachable twice (as dynamic-network-architectures' decoder.encoder)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
        self.decoder = nn.Module()
        self.decoder.encoder = self.encoder
        self.head = nn.Linear(256, 4)


def _saved_size(tmp_path, state_dict) -> tuple[int, dict]:
    path = tmp_path / "ck.pth"
    compact = cpu_state_dict(state_dict)
    atomic_torch_save({"network_weights": compact, "selma": {}}, path)
    return path.stat().st_size, compact


def test_shared_tensors_are_stored_once_and_load_back_equal(tmp_path):
    net = _Wrapped()
    state = net.state_dict()
    unique = unique_tensor_bytes(state)
    assert sum(v.numel() * v.element_size() for v in state.values()) > 1.9 * unique  # names repeat
    size, _ = _saved_size(tmp_path, state)
    assert size <= 1.1 * unique, (size, unique)
    loaded = read_checkpoint(tmp_path / "ck.pth")
    assert loaded.source == "selma"
    for key, value in state.items():
        assert torch.equal(loaded.weights[key], value), key


def test_a_view_of_a_larger_storage_is_stored_at_its_own_size(tmp_path):
    big = torch.randn(64, 1024)  # 256 KiB, of which the state dict names 2 rows
    state = {"a.weight": big[3], "b.weight": big[10:12]}
    size, compact = _saved_size(tmp_path, state)
    assert size <= 1.1 * unique_tensor_bytes(state) + 4096, size  # plus the archive's own records
    assert torch.equal(compact["a.weight"], big[3]) and torch.equal(compact["b.weight"], big[10:12])
    # a view whose storage another entry names whole is not copied: that storage is written anyway
    whole = {"w": big, "w_row": big[3]}
    assert cpu_state_dict(whole)["w_row"].untyped_storage().data_ptr() == big.untyped_storage().data_ptr()


def test_atomic_save_leaves_no_temporary_and_the_umask_mode(tmp_path):
    atomic_torch_save({"x": torch.zeros(3)}, tmp_path / "sub" / "f.pth")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sub" / "f.pth").stat().st_mode & 0o777 == 0o666 & ~umask
