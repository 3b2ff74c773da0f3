"""Every SELMA3D structure, per edition: subset names, file-name prefixes, category and density.

The one table of structure names. The converter (``dataset_conversion``), the evaluation
(``evaluation``), the submission's model selection (``submission.models``) and the synthetic
generator (``synthetic``) read it; none keeps its own list.

* :data:`STRUCTURES`: canonical key -> :class:`Structure` (what the structure is, the names its
  files start with per edition, its category per edition, its 2026 density, the spellings a
  model or dataset name may use, what the synthetic generator draws for it).
* :data:`SUBSETS`: subset folder or prefix exactly as on disk -> :class:`Subset` (the structure,
  the nnU-Net dataset name and ID slot, the channel names).

Sources: the 2024 download and the BioImage Archive deposit (subset folders), the organisers'
2026 evaluation code (YingChen7/SELMA3D2026_evaluation, ``evaluate.py``: the ten 2026 file-name
prefixes and their categories; microglia counts as isolated there) and the 2026 site
(YingChen7/SELMA3D-2026.github.io, ``Dataset-Task1.html``: dense/sparse per structure). The 2025
prefixes are the spellings accepted before 2026 (the 2025 names were not all published).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EDITIONS = ("2024", "2025", "2026")
ISOLATED, CONTIGUOUS = "isolated", "contiguous"
DENSE, SPARSE = "dense", "sparse"


@dataclass(frozen=True)
class Structure:
    """One biological structure of SELMA3D.

    ``prefixes[edition]``: the file-name prefixes a case of that edition starts with (matched
    case-insensitively, longest first); for 2026 the organisers' own prefix comes first.
    ``categories[edition]``: "isolated" or "contiguous" where that edition's leaderboard scored the
    structure (2024 scored only c-Fos and microglia). ``density``: "dense" or "sparse", the 2026
    subgroup. ``names``: spellings of the structure in subset, folder, model and dataset names
    (normalised: lower case, ``_`` for ``-``/spaces). ``synthetic``: what the synthetic generator
    draws for it (None: not drawn). ``test_only``: editions where it appears in the test sets only.
    """

    key: str
    title: str
    prefixes: dict[str, tuple[str, ...]]
    categories: dict[str, str]
    density: str | None
    names: tuple[str, ...]
    synthetic: str | None = None
    unannotated_folders: tuple[str, ...] = ()
    test_only: tuple[str, ...] = ()


_C_FOS_OLD = ("cfos", "c-fos", "c_fos")

#: canonical key -> Structure. Order matters where names tie (model selection keeps the first).
STRUCTURES: dict[str, Structure] = {s.key: s for s in (
    Structure("cfos", "c-Fos+ neurons",
              prefixes={"2024": _C_FOS_OLD, "2025": _C_FOS_OLD, "2026": ("cfos_neuron", *_C_FOS_OLD)},
              categories={"2024": ISOLATED, "2025": ISOLATED, "2026": ISOLATED}, density=DENSE,
              names=("cfos", "c_fos", "cfos_active_neurons"), synthetic="cfos", unannotated_folders=("cfos",)),
    Structure("microglia", "microglia",
              prefixes={"2024": ("microglia",), "2025": ("microglia",), "2026": ("microglia",)},
              # 2024/2025 scored microglia as tree-like/contiguous; the 2026 code scores it as isolated
              categories={"2024": CONTIGUOUS, "2025": CONTIGUOUS, "2026": ISOLATED}, density=DENSE,
              names=("microglia",), synthetic="microglia", test_only=EDITIONS),
    Structure("vessel", "blood vessels",
              prefixes={"2025": ("vessap_vessel", "blood_vessel", "vessel"),
                        "2026": ("blood_vessel", "vessap_vessel", "vessel")},
              categories={"2025": CONTIGUOUS, "2026": CONTIGUOUS}, density=DENSE,
              names=("vessel", "vessels", "vessap", "vessap_vessel", "blood_vessel"), synthetic="vessel",
              unannotated_folders=("vessel",)),
    Structure("nuclei", "cell nuclei",
              prefixes={"2025": ("shannel_cells", "cells", "cell_nuclei", "nuclei", "nucleus"),
                        "2026": ("cell_nuclei", "shannel_cells", "cells", "nuclei", "nucleus")},
              categories={"2025": ISOLATED, "2026": ISOLATED}, density=DENSE,
              names=("nuclei", "nucleus", "cell_nuclei", "shannel", "shannel_cells"), synthetic="nuclei",
              unannotated_folders=("nucleus",)),
    Structure("plaques", "amyloid-beta plaques",
              prefixes={"2025": ("ad_plaques", "ab_plaque", "plaques", "amyloid"),
                        "2026": ("ad_plaques", "ab_plaque", "plaques", "amyloid")},
              categories={"2025": ISOLATED, "2026": ISOLATED}, density=SPARSE,
              names=("plaques", "plaque", "ad_plaques", "ab_plaque", "amyloid"), synthetic="plaques",
              unannotated_folders=("ab_plaque",)),
    Structure("protein", "fluorescent protein (EGFP)",
              prefixes={"2025": ("protein", "proteins"), "2026": ("protein", "proteins")},
              categories={"2025": ISOLATED, "2026": ISOLATED}, density=SPARSE,
              names=("protein", "proteins", "egfp"), test_only=("2026",)),
    Structure("axon", "axonal markers",
              prefixes={"2025": ("axon", "axons"), "2026": ("axonalmarker", "axon", "axons")},
              categories={"2025": CONTIGUOUS, "2026": CONTIGUOUS}, density=SPARSE,
              names=("axon", "axons", "axonalmarker", "axonal_marker")),
    Structure("peripheral_nerve", "peripheral nerves",
              prefixes={"2025": ("nerve", "nerves"), "2026": ("peripheral_nerve", "nerve", "nerves")},
              categories={"2025": CONTIGUOUS, "2026": CONTIGUOUS}, density=SPARSE,
              names=("peripheral_nerve", "peripheral_nerves", "nerve", "nerves")),
    Structure("gut_nerve", "gut nerves",
              prefixes={"2026": ("gutnerve", "gut_nerve")},
              categories={"2026": CONTIGUOUS}, density=SPARSE,
              names=("gutnerve", "gut_nerve"), test_only=("2026",)),
    Structure("lymphatic_vessel", "(gut) lymphatic vessels",
              prefixes={"2025": ("lymphatic", "lymph"), "2026": ("lymphatic_vessel", "lymphatic", "lymph")},
              categories={"2025": CONTIGUOUS, "2026": CONTIGUOUS}, density=DENSE,
              names=("lymphatic_vessel", "lymphatic", "lymph"), test_only=("2026",)),
)}


@dataclass(frozen=True)
class Subset:
    """An annotated subset as named on disk: its structure, nnU-Net dataset name, ID slot and stains.

    ``slot``: default dataset ID = first ID + slot; subsets of one structure across editions share
    a slot (a download holds one edition); None numbers the subset after the known slots.
    """

    name: str
    structure: str
    dataset_structure: str
    slot: int | None
    channel_names: tuple[str, ...] = ("LSM",)
    editions: tuple[str, ...] = field(default=EDITIONS)


#: subset name exactly as on disk -> Subset. 2025/2026 releases name patches by structure
#: (``AD_plaques_patchvolume_023``); their stains are not published, hence "LSM".
SUBSETS: dict[str, Subset] = {s.name: s for s in (
    Subset("shannel_cells", "nuclei", "Nuclei", 0, ("PropidiumIodide",), ("2024",)),
    Subset("VessAP_vessel", "vessel", "Vessels", 1, ("WGA", "EvansBlue"), ("2024",)),
    Subset("cFos-Active_Neurons", "cfos", "cFos", 2, ("cFos",), ("2024",)),
    Subset("AD_plaques", "plaques", "Plaques", 3, ("CongoRed",)),
    Subset("blood_vessel", "vessel", "BloodVessels", 4, editions=("2025", "2026")),
    Subset("microglia", "microglia", "Microglia", 5, editions=("2025", "2026")),  # test-only in 2024
    Subset("axon", "axon", "Axons", 6, editions=("2025",)),
    Subset("peripheral_nerve", "peripheral_nerve", "PeripheralNerves", 7, editions=("2026",)),
    Subset("lymphatic_vessel", "lymphatic_vessel", "LymphaticVessels", 8, editions=("2026",)),
    Subset("cfos_neuron", "cfos", "cFos", 2, editions=("2026",)),
    Subset("cell_nuclei", "nuclei", "Nuclei", 0, editions=("2026",)),
    Subset("axonalmarker", "axon", "Axons", 6, editions=("2026",)),
    Subset("gutnerve", "gut_nerve", "GutNerves", None, editions=("2026",)),
    Subset("protein", "protein", "Protein", None, editions=("2026",)),
)}


def check_edition(edition: str | int) -> str:
    """``edition`` as one of :data:`EDITIONS`; ValueError naming the value otherwise."""
    edition = str(edition)
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}; expected one of {', '.join(EDITIONS)}")
    return edition


def case_prefixes(edition: str) -> dict[str, str]:
    """Lower-case file-name prefix -> structure key, for the structures ``edition`` scored."""
    edition = check_edition(edition)
    table: dict[str, str] = {}
    for s in STRUCTURES.values():
        if edition in s.categories:
            for prefix in s.prefixes.get(edition, ()):
                table.setdefault(prefix.lower(), s.key)
    return table


def structure_of_case(case: str, edition: str) -> Structure | None:
    """The structure a case name belongs to in ``edition`` (longest matching prefix), or None."""
    table = case_prefixes(edition)
    lower = case.lower()
    matches = [p for p in table if lower.startswith(p)]
    return STRUCTURES[table[max(matches, key=len)]] if matches else None


def unannotated_folder_structures() -> dict[str, str]:
    """2024 unannotated folder name (``ab_plaque``, ``nucleus``...) -> synthetic structure drawn."""
    return {f: s.synthetic for s in STRUCTURES.values() for f in s.unannotated_folders if s.synthetic}


def model_prefixes() -> dict[str, tuple[str, ...]]:
    """Structure key -> the normalised names a model, dataset or input file of it may start with."""
    return {s.key: s.names for s in STRUCTURES.values()}


def subsets_of_edition(edition: str) -> tuple[str, ...]:
    """Subset names on disk in ``edition``'s downloads (test-only structures included)."""
    edition = check_edition(edition)
    return tuple(name for name, s in SUBSETS.items() if edition in s.editions)
