"""Where the bundled files live: inside the installed wheel, or at the repository root."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[2]  # napari_dropsembles/


def sample_data_dir() -> Path:
    """``napari_dropsembles/sample_data`` in a wheel; ``<repo>/sample_data`` in a source checkout."""
    for candidate in (_PACKAGE / "sample_data", _PACKAGE.parent / "sample_data"):
        if candidate.is_dir():
            return candidate
    return _PACKAGE.parent / "sample_data"


def bundled_prior_path() -> Path:
    return sample_data_dir() / "lumbar_vertebra_prior.safetensors"


def bundled_mri_path() -> Path:
    """The bundled real lumbar MRI segmentation (sagittal T2w, 0.59 x 0.59 x 3.3 mm, VerSe label numbers)."""
    return sample_data_dir() / "lumbar_mri_seg.nii.gz"


def bundled_sample_paths() -> dict[str, Path]:
    """The bundled low-resolution case: observation and its dense ground truth."""
    folder = sample_data_dir()
    return {
        "observation": folder / "vertebra_observation.nii.gz",
        "ground_truth": folder / "vertebra_ground_truth.nii.gz",
    }
