"""The one table of SELMA3D structure names, and that every stage reads it."""

from __future__ import annotations

import pytest

from nnunetv2_selma import structures as st

# the organisers' 2026 evaluate.py prefixes and categories; dense/sparse from the 2026 site
OFFICIAL_2026 = {
    "axonalmarker": ("contiguous", "sparse"), "blood_vessel": ("contiguous", "dense"),
    "gutnerve": ("contiguous", "sparse"), "lymphatic_vessel": ("contiguous", "dense"),
    "peripheral_nerve": ("contiguous", "sparse"), "AD_plaques": ("isolated", "sparse"),
    "cell_nuclei": ("isolated", "dense"), "cfos_neuron": ("isolated", "dense"),
    "microglia": ("isolated", "dense"), "protein": ("isolated", "sparse"),
}


@pytest.mark.parametrize("prefix, expected", OFFICIAL_2026.items())
def test_2026_prefixes_categories_and_density(prefix, expected):
    s = st.structure_of_case(f"{prefix}_patchvolume_001.mha", "2026")
    assert s is not None and (s.categories["2026"], s.density) == expected
    assert s.prefixes["2026"][0] == prefix.lower()  # the organisers' prefix comes first


def test_2024_scored_only_cfos_and_microglia():
    assert set(st.case_prefixes("2024")) == {"cfos", "c-fos", "c_fos", "microglia"}
    assert st.STRUCTURES["microglia"].categories["2024"] == "contiguous"
    assert st.subsets_of_edition("2024") == ("shannel_cells", "VessAP_vessel", "cFos-Active_Neurons", "AD_plaques")


def test_every_subset_names_a_structure_and_ids_stay():
    assert all(s.structure in st.STRUCTURES for s in st.SUBSETS.values())
    for name, slot in {"shannel_cells": 0, "VessAP_vessel": 1, "cFos-Active_Neurons": 2, "AD_plaques": 3,
                       "cfos_neuron": 2, "cell_nuclei": 0, "axonalmarker": 6, "peripheral_nerve": 7}.items():
        assert st.SUBSETS[name].slot == slot, name
    with pytest.raises(ValueError, match="edition '2023'"):
        st.check_edition("2023")


def test_stages_read_the_one_table():
    from nnunetv2_selma.dataset_conversion.annotated import KNOWN_SUBSETS
    from nnunetv2_selma.submission.models import KNOWN_STRUCTURE_PREFIXES
    from nnunetv2_selma.synthetic.download import SUBSETS_2024, UNANNOTATED_STRUCTURES
    from nnunetv2_selma.synthetic.volumes import STRUCTURE_ALIASES

    assert set(KNOWN_SUBSETS) == set(st.SUBSETS)
    assert KNOWN_STRUCTURE_PREFIXES == st.model_prefixes()
    assert SUBSETS_2024 == {"shannel_cells": "nuclei", "VessAP_vessel": "vessel", "cFos-Active_Neurons": "cfos",
                            "AD_plaques": "plaques"}
    assert UNANNOTATED_STRUCTURES == ("ab_plaque", "cfos", "nucleus", "vessel")
    assert STRUCTURE_ALIASES == {"ab_plaque": "plaques", "nucleus": "nuclei", "cfos": "cfos", "vessel": "vessel"}
