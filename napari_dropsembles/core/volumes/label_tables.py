"""Names of the structures of a label map from TotalSegmentator (v1, v2) or VerSe, and distinct colours.

A label map carries numbers only; the same number is L3 in one tool's table and the colon in another's.
:func:`known_names` picks a table only when the map itself agrees with it: every label present is in
the table, and at least three of them are vertebrae stacked in the table's order from head to feet
(world superior axis, RAS mm), each 10-60 mm from the next. Otherwise it names nothing. A file's own
names (a .seg.nrrd's or DICOM-SEG's segments, a NIfTI label-table extension) always come first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .volume import Volume


def _words(text: str) -> list[str]:
    return text.split()


_VERTEBRAE = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
_V1_ORGANS = _words(
    """
    spleen kidney_right kidney_left gallbladder liver stomach aorta inferior_vena_cava
    portal_vein_and_splenic_vein pancreas adrenal_gland_right adrenal_gland_left lung_upper_lobe_left
    lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right
    """
)
_V1_REST = _words(
    """
    esophagus trachea heart_myocardium heart_atrium_left heart_ventricle_left heart_atrium_right
    heart_ventricle_right pulmonary_artery brain iliac_artery_left iliac_artery_right iliac_vena_left
    iliac_vena_right small_bowel duodenum colon
    """
)
_V1_TAIL = _words(
    """
    humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right femur_left
    femur_right hip_left hip_right sacrum face gluteus_maximus_left gluteus_maximus_right
    gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left
    autochthon_right iliopsoas_left iliopsoas_right urinary_bladder
    """
)
_V2_HEAD = _words(
    """
    spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right
    adrenal_gland_left lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right
    lung_middle_lobe_right lung_lower_lobe_right esophagus trachea thyroid_gland small_bowel duodenum colon
    urinary_bladder prostate kidney_cyst_left kidney_cyst_right sacrum vertebrae_S1
    """
)
_V2_TAIL = _words(
    """
    heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right subclavian_artery_left
    common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left
    brachiocephalic_vein_right atrial_appendage_left superior_vena_cava inferior_vena_cava
    portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left iliac_vena_right
    humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right femur_left
    femur_right hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right
    gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left
    autochthon_right iliopsoas_left iliopsoas_right brain skull
    """
)
_RIBS = [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
_CAUDAL_FIRST = [f"vertebrae_{name}" for name in reversed(_VERTEBRAE)]  # L5 ... C1, TotalSegmentator's order


@dataclass(frozen=True)
class LabelTable:
    """A tool's label numbers: their names, and the vertebrae from head to feet (for the order check)."""

    name: str
    names: Mapping[int, str]
    cranio_caudal: tuple[int, ...]  # vertebra labels, cranial first


def _numbered(names: Iterable[str], start: int = 1) -> dict[int, str]:
    return {start + i: name for i, name in enumerate(names)}


def _spine(names: Mapping[int, str]) -> tuple[int, ...]:
    order = [f"vertebrae_{v}" for v in _VERTEBRAE] + ["vertebrae_S1", "sacrum"]
    by_name = {name: label for label, name in names.items()}
    return tuple(by_name[name] for name in order if name in by_name)


_TS1 = _numbered([*_V1_ORGANS, *_CAUDAL_FIRST, *_V1_REST, *_RIBS, *_V1_TAIL])
_TS2 = _numbered([*_V2_HEAD, *_CAUDAL_FIRST, *_V2_TAIL, *_RIBS, "sternum", "costal_cartilages"])
_VERSE = {**_numbered(_VERTEBRAE), 25: "L6", 26: "sacrum", 28: "T13"}

TABLES = (
    LabelTable("TotalSegmentator v1", _TS1, _spine(_TS1)),
    LabelTable("TotalSegmentator v2", _TS2, _spine(_TS2)),
    LabelTable("VerSe", _VERSE, tuple([*range(1, 20), 28, *range(20, 27)])),
)
MIN_VERTEBRAE = 3  # stacked in order: what it takes to believe a table
STEP_MM = (10.0, 60.0)  # centre-to-centre distance of neighbouring vertebrae


def display_name(name: str) -> str:
    """'vertebrae_L1' -> 'L1', 'kidney_left' -> 'kidney left'."""
    return name.removeprefix("vertebrae_").replace("_", " ")


CENTRE_VOXELS = 2_000_000  # centres are computed on a grid thinned to about this many voxels


def label_centres_mm(volume: Volume) -> dict[int, np.ndarray]:
    """label -> centre in world mm of each non-zero label of an integer label map (on a thinned grid:
    a large scan costs a fraction of a second)."""
    data = np.asarray(volume.data)
    if data.ndim != 3 or data.size == 0:
        return {}
    step = max(1, int(np.ceil((data.size / CENTRE_VOXELS) ** (1 / 3))))
    data = data[::step, ::step, ::step]
    if data.dtype.kind not in "iub":
        data = np.round(np.nan_to_num(data)).astype(np.int64)
    flat = data.reshape(-1).astype(np.int64)
    if flat.min() < 0:
        return {}
    counts = np.bincount(flat)
    present = [int(v) for v in np.nonzero(counts)[0] if v != 0]
    if not present:
        return {}
    index = np.indices(data.shape, dtype=np.int32).reshape(3, -1)
    sums = np.stack([np.bincount(flat, weights=axis, minlength=counts.size) for axis in index], axis=1)
    centres = volume.index_to_world(step * sums[present] / counts[present][:, None])
    return dict(zip(present, centres, strict=True))


def _stacked_in_order(table: LabelTable, centres: Mapping[int, np.ndarray]) -> bool:
    """At least MIN_VERTEBRAE vertebrae of ``table`` present, head to feet in its order, neighbours 10-60 mm."""
    spine = [label for label in table.cranio_caudal if label in centres]
    if len(spine) < MIN_VERTEBRAE:
        return False
    superior = np.array([centres[label][2] for label in spine])  # RAS: z goes to the head
    if not np.all(np.diff(superior) < 0):
        return False
    position = {label: i for i, label in enumerate(table.cranio_caudal)}
    for upper, lower in zip(spine, spine[1:], strict=False):
        distance = float(np.linalg.norm(centres[upper] - centres[lower]))
        steps = position[lower] - position[upper]
        if not STEP_MM[0] * steps <= distance <= STEP_MM[1] * steps:
            return False
    return True


def known_names(
    volume: Volume, labels: Iterable[int] | None = None, centres: Mapping[int, np.ndarray] | None = None
) -> tuple[str, dict[int, str]]:
    """(table name, label -> name) of the one known table the label map agrees with; ('', {}) otherwise."""
    centres = label_centres_mm(volume) if centres is None else centres
    present = set(centres) if labels is None else {int(v) for v in labels} & set(centres)
    if not present:
        return "", {}
    matches = [t for t in TABLES if present <= set(t.names) and _stacked_in_order(t, centres)]
    if len(matches) != 1:
        return "", {}
    table = matches[0]
    return table.name, {label: display_name(table.names[label]) for label in sorted(present)}


DISTINCT = (  # 12 fills told apart on a dark canvas and over a grey scan; none cyan, lime or magenta, the
    # outline colours of the result drawn over them (napari_dropsembles/_gui/layers.OUTLINE_CHOICES)
    "#4363d8", "#f58231", "#3cb44b", "#911eb4", "#ffe119", "#e6194b",
    "#469990", "#fabed4", "#9a6324", "#dcbeff", "#aaffc3", "#808000",
)  # fmt: skip


def distinct_colours(labels: Iterable[int], order: Iterable[int] | None = None) -> dict[int, tuple]:
    """label -> RGB (0-1): neighbours in ``order`` (default: label order) get colours far apart."""
    ranked = list(order) if order is not None else sorted({int(v) for v in labels})
    wanted = {int(v) for v in labels}
    ranked = [label for label in ranked if label in wanted] + sorted(wanted - set(ranked))
    colours = {}
    for rank, label in enumerate(ranked):
        hex_colour = DISTINCT[rank % len(DISTINCT)]
        colours[label] = tuple(int(hex_colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    return colours


def head_to_feet(centres: Mapping[int, np.ndarray]) -> list[int]:
    """Labels from the most superior centre down (RAS world: z goes to the head)."""
    return sorted(centres, key=lambda label: -float(centres[label][2]))


@dataclass(frozen=True)
class LabelDescription:
    """What a label map's numbers are: names (its own, or a known table's) and a colour each."""

    names: dict[int, str]
    colours: dict[int, tuple]
    source: str  # "file", a table's name, or "" (no names)


def describe_labels(volume: Volume, own: Mapping[int, tuple] | None = None) -> LabelDescription:
    """Names and distinct colours of a label map: ``own`` (label -> (name, RGB or None), the file's segments)
    first, else a known table; colours as given, else neighbours (head to feet) far apart."""
    centres = label_centres_mm(volume)
    present = sorted(centres)
    if own:
        names = {int(k): str(v[0]) for k, v in own.items() if int(k) in centres}
        given = {int(k): tuple(v[1]) for k, v in own.items() if int(k) in centres and v[1] is not None}
        source = "file"
    else:
        source, names = known_names(volume, centres=centres)
        given = {}
    colours = {**distinct_colours(present, head_to_feet(centres)), **given}
    return LabelDescription(names, colours, source)
