"""The real-resolution case of the speed benches: a real lumbar vertebra at 1 mm seen through 5 mm slices.

verse005 L3 (VerSe, CC BY-SA 4.0; 1 mm isotropic CT mask, ``../shared/real/verse``), every 5th
sagittal slice kept (voxel axis 2, offset 2), written with nibabel as a .nii.gz observation.
Also: the load of the machine and the busy processes the benches start (``while True: pass``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL = ROOT.parent / "shared" / "real" / "verse" / "vertebrae" / "verse005_L3.nii.gz"
FACTOR, AXIS, OFFSET = 5, 2, 2
NAME = "verse005 L3, 1 mm, every 5th sagittal slice"


def write_observation(folder: Path, source: Path = REAL) -> Path:
    """The thinned observation as ``folder/lumbar_1mm_5mm.nii.gz`` (and its dense truth beside it)."""
    import nibabel as nib

    from napari_dropsembles.core.data.slicing import keep_every_kth_slice
    from napari_dropsembles.core.io.volumes import read_volume

    if not source.is_file():
        raise SystemExit(f"the real case is missing: {source} (see ../shared/real/README.md)")
    truth = read_volume(source)
    observation = keep_every_kth_slice(truth, FACTOR, AXIS, offset=OFFSET)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lumbar_1mm_5mm.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(observation.data, dtype=np.uint8), observation.affine), path)
    nib.save(nib.Nifti1Image(np.asarray(truth.data, dtype=np.uint8), truth.affine), folder / "lumbar_1mm_truth.nii.gz")
    return path


def machine_load() -> dict:
    """1-minute load average and the cores other processes kept busy over the last 0.5 s."""
    from napari_dropsembles.core.networks.threads import busy_elsewhere, mark_cpu

    mark_cpu()
    return {"load_1min": round(os.getloadavg()[0], 2), "busy_cores": round(busy_elsewhere(0.5), 2)}


class BusyCores:
    """``count`` processes spinning ``while True: pass`` (each keeps one core busy) while in use."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> BusyCores:
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        time.sleep(0.5 if self.count else 0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def cli(*args: str) -> list[str]:
    """The command line run from this checkout (not an installed copy)."""
    return [sys.executable, "-m", "napari_dropsembles.cli", *args]


THREAD_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
               "OPENBLAS_NUM_THREADS", "DROPSEMBLES_THREADS")  # fmt: skip


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child running this checkout, without the thread settings that
    importing the package put here (the child's own import sets them again; older code runs as it did)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_KEYS}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
