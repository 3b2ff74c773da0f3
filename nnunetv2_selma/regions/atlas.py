"""Open a BrainGlobe atlas by name, from a local folder when it is there (no network needed)."""

from __future__ import annotations

from pathlib import Path

#: where brainglobe-atlasapi keeps v3 atlases under its ``brainglobe_dir``
ATLASES_SUBDIR = Path("brainglobe-atlasapi") / "atlases"


class AtlasNotFoundError(ValueError):
    """The atlas is neither on disk nor downloadable; the message says where it was looked for."""


def default_brainglobe_dir() -> Path:
    """brainglobe-atlasapi's own default ``brainglobe_dir`` (from its config file)."""
    from brainglobe_atlasapi.config import get_brainglobe_dir

    return Path(get_brainglobe_dir())


def local_atlases(brainglobe_dir: str | Path) -> list[str]:
    """Names of the atlases on disk under ``brainglobe_dir`` (those with a ``manifest.json``), sorted."""
    root = Path(brainglobe_dir) / ATLASES_SUBDIR
    return sorted({p.parent.parent.name for p in root.glob("*/*/manifest.json")})


def open_atlas(name: str, brainglobe_dir: str | Path | None = None, download: bool = True):
    """A ``BrainGlobeAtlas`` by name: from ``brainglobe_dir`` when it is there, else downloaded (when ``download``).

    Parameters
    ----------
    name : BrainGlobe atlas name with its resolution, e.g. ``allen_mouse_25um``.
    brainglobe_dir : the folder brainglobe-atlasapi keeps its atlases in (its ``brainglobe_dir``); default its own.
    download : try brainglobe-atlasapi's download when the atlas is not on disk.

    Raises
    ------
    AtlasNotFoundError naming the atlas, the folder searched, the atlases found there and what to do.
    """
    from brainglobe_atlasapi import BrainGlobeAtlas

    folder = Path(brainglobe_dir) if brainglobe_dir is not None else default_brainglobe_dir()
    on_disk = local_atlases(folder)
    if name in on_disk:
        return BrainGlobeAtlas(name, brainglobe_dir=folder, check_latest=False)
    found = ", ".join(on_disk) if on_disk else "none"
    advice = (f"Give an atlas on disk (found there: {found}), point --brainglobe-dir at the folder that holds "
              f"brainglobe-atlasapi/atlases/{name}, or download it on a machine with internet access "
              f"(brainglobe install -a {name}) and copy that folder here.")
    if not download:
        raise AtlasNotFoundError(f"atlas {name!r}: not on disk under {folder / ATLASES_SUBDIR}. {advice}")
    try:
        return BrainGlobeAtlas(name, brainglobe_dir=folder, check_latest=False)
    except Exception as error:  # offline, unknown name, server down: all end the same way for the user
        raise AtlasNotFoundError(f"atlas {name!r}: not on disk under {folder / ATLASES_SUBDIR}, and "
                                 f"brainglobe-atlasapi could not download it ({type(error).__name__}: {error}). "
                                 f"{advice}") from error


def atlas_version(atlas) -> str:
    """The atlas's version string from its manifest."""
    return str(atlas.metadata.get("version", "unknown"))


__all__ = ["ATLASES_SUBDIR", "AtlasNotFoundError", "atlas_version", "default_brainglobe_dir", "local_atlases",
           "open_atlas"]
