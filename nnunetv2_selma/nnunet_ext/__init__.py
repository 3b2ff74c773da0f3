"""The folder nnU-Net searches for our trainers (``nnUNet_extTrainer``), and how to register it.

nnU-Net looks for ``-tr NAME`` inside ``nnunetv2.training.nnUNetTrainer``, then imports every
module of every folder listed in ``nnUNet_extTrainer`` as a *top-level* module. This folder holds
one such module, ``selma_trainers.py``, that only re-exports the trainers of
:mod:`nnunetv2_selma.training`, so the classes nnU-Net finds are the package's own (they pickle
in data-loader and DDP worker processes). This ``__init__`` is never scanned by nnU-Net.

Two ways to register the folder:

* for good: ``nnUNetv2_selma_setup_trainers`` writes ``nnunetv2_selma_trainers.pth`` into the
  environment's site-packages; Python runs its one line at every start and appends this folder to
  ``nnUNet_extTrainer`` (keeping whatever the user had there);
* per shell: ``eval "$(nnUNetv2_selma_setup_trainers --print)"``.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from nnunetv2_selma.atomic import write_atomic

#: name of the .pth file written into site-packages
PTH_NAME = "nnunetv2_selma_trainers.pth"
ENV_VAR = "nnUNet_extTrainer"


def shim_folder() -> Path:
    """Absolute path of this folder (the value to add to ``nnUNet_extTrainer``)."""
    return Path(__file__).resolve().parent


def export_line() -> str:
    """Shell line that appends :func:`shim_folder` to ``nnUNet_extTrainer`` (bash/zsh)."""
    return f'export {ENV_VAR}="${{{ENV_VAR}:+${ENV_VAR}{os.pathsep}}}{shim_folder()}"'


def pth_line() -> str:
    """The one line of the ``.pth`` file: append the folder to ``nnUNet_extTrainer`` once, at start-up.

    It only touches ``os.environ`` (no import of this package), so a later uninstall leaves a
    harmless line: nnU-Net skips folders that do not exist.
    """
    folder = str(shim_folder())
    return (
        f"import os; os.environ[{ENV_VAR!r}] = os.pathsep.join([p for p in os.environ.get({ENV_VAR!r}, '')"
        f".split(os.pathsep) if p and p != {folder!r}] + [{folder!r}])\n"
    )


def default_site_dir() -> Path:
    """site-packages of the running interpreter (the virtual environment nnU-Net is installed in)."""
    return Path(sysconfig.get_paths()["purelib"])


def install_pth(site_dir: str | os.PathLike | None = None) -> Path:
    """Write the ``.pth`` file into ``site_dir`` (default :func:`default_site_dir`); return its path.

    Written to a temporary file and renamed, so a concurrent interpreter start never reads half a line.
    """
    site_dir = Path(site_dir) if site_dir is not None else default_site_dir()
    if not site_dir.is_dir():
        raise FileNotFoundError(f"site-packages folder {site_dir} does not exist")
    target = site_dir / PTH_NAME
    write_atomic(target, lambda f: f.write(pth_line()))
    return target


def remove_pth(site_dir: str | os.PathLike | None = None) -> Path | None:
    """Remove the ``.pth`` file from ``site_dir``; return its path, or ``None`` if there was none."""
    target = (Path(site_dir) if site_dir is not None else default_site_dir()) / PTH_NAME
    if target.exists():
        target.unlink()
        return target
    return None
