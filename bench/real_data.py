"""The real anatomy of ``../shared/real`` (see its README) as benchmark and training cases.

- Vertebrae of 8 subjects: the VerSe masks of ``verse/vertebrae`` (7 subjects; verse005 and gl003 at 1 mm
  are dense, the other five have 2-3 mm slices along one axis and are themselves sparse) and the
  TotalSegmentator L1-L5 and T12 at 3 mm (subject ``ts``; the T11 fragment is left out).
- Shapes that are not vertebrae: the TotalSegmentator organs and bones, and the 15 AMOS organs.
- Thick observations: every k-th slice of a mask kept along the voxel axis closest to a world axis
  (sagittal: x, coronal: y, axial: z), k the slice spacing asked for over the voxel size, at an offset.
- Two folds of subjects, each holding out dense and sparse subjects: every subject is scored with a prior
  that never saw it (leave-subject-out; never split by vertebra).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dropsembles.core.data.slicing import keep_every_kth_slice
from napari_dropsembles.core.io.volumes import read_volume
from napari_dropsembles.core.volumes.volume import Volume

REAL = Path(os.environ.get("DROPSEMBLES_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "real"))
DENSE_SUBJECTS = ("verse005", "gl003", "ts")
FOLDS = {"A": ("verse005", "ts", "verse004", "verse006"), "B": ("gl003", "verse007", "verse008", "verse009")}
TS_VERTEBRAE = ("L1", "L2", "L3", "L4", "L5", "T12")
TS_OTHERS = ("kidney_left", "spleen", "hip_left", "femur_left", "rib_left_12")
ORIENTATIONS = {"sagittal": 0, "coronal": 1, "axial": 2}
REGIONS = {"C": "cervical", "T": "thoracic", "L": "lumbar"}


@dataclass(frozen=True)
class RealMask:
    subject: str
    name: str  # vertebra (L3, T12, C1, ...) or organ/bone name
    path: Path

    @property
    def dense(self) -> bool:
        return self.subject in DENSE_SUBJECTS

    @property
    def region(self) -> str:
        return REGIONS.get(self.name[:1], "other")

    def load(self) -> Volume:
        volume = read_volume(self.path)
        return volume.with_data((np.asarray(volume.data) > 0).astype(np.uint8))


def check_real_data(root: Path = REAL) -> Path:
    if not (root / "verse" / "vertebrae").is_dir():
        raise SystemExit(f"no real data at {root}: set DROPSEMBLES_REAL_DATA to the shared/real folder")
    return root


def vertebrae(root: Path = REAL) -> list[RealMask]:
    """Every real vertebra, VerSe subjects first, then TotalSegmentator's."""
    out = []
    for path in sorted((root / "verse" / "vertebrae").glob("*.nii.gz")):
        subject, name = path.name[: -len(".nii.gz")].split("_")
        out.append(RealMask(subject, name, path))
    out += [RealMask("ts", name, root / f"vertebrae_{name}.nii.gz") for name in TS_VERTEBRAE]
    return out


def fold_of(subject: str) -> str:
    return next(fold for fold, held_out in FOLDS.items() if subject in held_out)


def training_files(fold: str | None, root: Path = REAL) -> list[Path]:
    """The vertebra files a fold's prior trains on (every subject not held out; ``None``: all)."""
    held_out = () if fold is None else FOLDS[fold]
    return [m.path for m in vertebrae(root) if m.subject not in held_out]


def voxel_axis(volume: Volume, orientation: str) -> int:
    """The voxel axis closest to the world axis of an orientation's slice normal."""
    rotation = volume.affine[:3, :3] / volume.spacing
    return int(np.argmax(np.abs(rotation[ORIENTATIONS[orientation]])))


def slice_factor(volume: Volume, orientation: str, mm: float) -> int:
    """Slices kept one in k for slices ``mm`` apart (0 when the mask's own slices are already that thick)."""
    k = int(round(mm / float(volume.spacing[voxel_axis(volume, orientation)])))
    return k if k >= 2 else 0


def observe(truth: Volume, orientation: str, factor: int, offset: int) -> Volume:
    return keep_every_kth_slice(truth, factor, voxel_axis(truth, orientation), offset=offset % factor)


def other_shapes(root: Path = REAL) -> list[tuple[str, Volume]]:
    """Shapes that are not vertebrae: TotalSegmentator organs/bones and the AMOS organs, each cropped."""
    out = []
    for name in TS_OTHERS:
        out.append((f"ts {name}", RealMask("ts", name, root / f"{name}.nii.gz").load()))
    amos = read_volume(root / "organs" / "amos_0013_labels.nii.gz")
    labels = np.asarray(amos.data)
    for label in range(1, 16):
        mask = labels == label
        if mask.sum() < 50:
            continue
        index = np.argwhere(mask)
        lo, hi = np.maximum(index.min(0) - 4, 0), index.max(0) + 5
        affine = np.array(amos.affine, dtype=float)
        affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
        crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.uint8)
        out.append((f"amos {label}", Volume(np.ascontiguousarray(crop), affine)))
    return out
