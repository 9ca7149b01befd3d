"""Segment names a NIfTI label map carries itself: a label-table header extension.

TotalSegmentator (``--ml``) and other tools write a CIFTI/GIFTI-style ``<LabelTable>`` of
``<Label Key="k" Red=".." Green=".." Blue="..">name</Label>`` into a NIfTI header extension. Read
here with the standard library; a file without one, or one that cannot be parsed, gives {}.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

MAX_EXTENSION_BYTES = 4 << 20


def nifti_label_table(path: str | os.PathLike) -> dict[int, tuple[str, tuple[float, float, float] | None]]:
    """label -> (name, RGB in 0-1 or None) from a NIfTI file's label-table extension ({} when it has none)."""
    if not str(path).lower().endswith((".nii", ".nii.gz")) or not Path(path).is_file():
        return {}
    import nibabel  # nibabel: slow to import, loaded when a NIfTI file is read or written

    try:
        extensions = nibabel.load(str(path)).header.extensions
    except Exception:  # noqa: BLE001 - the volume reader says what is wrong with the file
        return {}
    for extension in extensions:
        with contextlib.suppress(Exception):
            content = extension.get_content()
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
            if "<LabelTable" in text and len(text) <= MAX_EXTENSION_BYTES:
                return _labels(ElementTree.fromstring(text.strip().strip("\x00")))
    return {}


def _labels(root: ElementTree.Element) -> dict[int, tuple[str, tuple[float, float, float] | None]]:
    table = {}
    for label in root.iter("Label"):
        name = (label.text or "").strip()
        try:
            key = int(label.get("Key", ""))
        except ValueError:
            continue
        if key <= 0 or not name:
            continue
        try:
            colour = tuple(float(label.get(channel, "")) for channel in ("Red", "Green", "Blue"))
        except ValueError:
            colour = None
        table[key] = (name, colour)
    return table
