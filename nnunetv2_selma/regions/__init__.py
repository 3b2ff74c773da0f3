"""Objects per brain region: the whole brain registered to a BrainGlobe atlas, each object counted in its region.

A stage beside :mod:`~nnunetv2_selma.inference`: it reads the objects folder that
``nnUNetv2_selma_objects`` (or ``predict_large --objects``) writes, and the whole-brain channel.

* :mod:`~nnunetv2_selma.regions.atlas`: open a BrainGlobe atlas by name, offline when it is on disk;
* :mod:`~nnunetv2_selma.regions.downsample`: the channel to the atlas resolution and orientation, slab by slab;
* :mod:`~nnunetv2_selma.regions.registration`: itk-elastix affine + B-spline, transformix for the points;
* :mod:`~nnunetv2_selma.regions.pictures`: coronal sections with region outlines, densest regions;
* :mod:`~nnunetv2_selma.regions.pipeline`: :func:`count_regions`, the resumable command behind
  ``nnUNetv2_selma_regions``.

Its dependencies (brainglobe-atlasapi, brainglobe-space, itk-elastix) are the ``[atlas]`` extra: the rest
of the plugin does not need them, and :func:`require_atlas_extra` names the install command when missing.
"""

from __future__ import annotations

import importlib

#: the modules of the ``[atlas]`` extra, by the distribution that provides each
ATLAS_EXTRA_MODULES = {"brainglobe_atlasapi": "brainglobe-atlasapi", "brainglobe_space": "brainglobe-space",
                       "itk": "itk-elastix"}
INSTALL_HINT = "pip install 'nnunetv2-selma[atlas]'"


class AtlasExtraMissingError(ImportError):
    """A package of the ``[atlas]`` extra is not installed; the message names the command that installs it."""


def require_atlas_extra() -> None:
    """Import the ``[atlas]`` extra's packages or raise :class:`AtlasExtraMissingError` naming the install command."""
    missing = []
    for module, distribution in ATLAS_EXTRA_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise AtlasExtraMissingError(
            f"counting objects per brain region needs {', '.join(missing)} (the plugin's [atlas] extra), which "
            f"is not installed in this environment. Install it with: {INSTALL_HINT} "
            f"(from a clone: pip install -e '.[atlas]'), then rerun.")


__all__ = ["ATLAS_EXTRA_MODULES", "INSTALL_HINT", "AtlasExtraMissingError", "require_atlas_extra"]
