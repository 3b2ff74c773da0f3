"""The record a synthetic download carries at its root, and the test set it names.

Conversion reads it to keep the challenge-style test inputs out of training; the generator writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

#: the record ``nnUNetv2_selma_synthesize`` writes at a download's root; its ``test_set`` names the folder
#: (relative to the root) of the challenge-style test inputs, which conversion must never train on
DOWNLOAD_RECORD = "synthetic_summary.json"


def recorded_test_set(folder: str | Path) -> Path | None:
    """The test-input folder that ``folder``'s download record names, or None (no record, no test set).

    Records written before ``test_set`` existed list the test images (``<root>/<test set>/images/<name>``)
    under ``test_inputs``; the folder is taken from the first of them.
    """
    folder = Path(folder)
    path = folder / DOWNLOAD_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable download record ({e}); expected the JSON that "
                         f"nnUNetv2_selma_synthesize writes, which names the test set (restore or remove it)") from e
    relative = record.get("test_set") if isinstance(record, dict) else None
    if relative is None and isinstance(record, dict) and record.get("test_inputs"):
        try:
            relative = str(Path(record["test_inputs"][0]).relative_to(record["root"]).parent.parent)
        except (KeyError, TypeError, ValueError):
            relative = None
    return folder / relative if relative else None


__all__ = ["DOWNLOAD_RECORD", "recorded_test_set"]
