"""Morphological contour interpolation (ITK), the "fill between slices" users know from 3D Slicer and
ITK-SNAP: a fourth baseline beside nearest, linear and shape-based interpolation.

The observed slices are placed on a fine grid (the thick axis refined to the in-plane spacing, as the
default output grid is), ITK's ``MorphologicalContourInterpolator`` fills the slices between them along
the slice axis, and the result is read onto the target grid by nearest neighbour. It needs the optional
package ``itk-morphologicalcontourinterpolation`` (``pip install napari-dropsembles[contour]``, about
1.5 GB with ITK): without it :func:`contour_available` is False and reports say the baseline was skipped.

ITK runs in a worker process of its own (core/slices/contour_worker: ITK and SimpleITK in one process crash
it at exit), started at the first use and kept for the next ones (ITK takes seconds to import).
"""

from __future__ import annotations

import atexit
import subprocess
import sys
import threading
from importlib import metadata

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume
from .contour_worker import receive, send
from .slice_field import SliceReading, thick_axis

PACKAGE = "itk-morphologicalcontourinterpolation"
SKIPPED = f"skipped: {PACKAGE} is not installed (pip install 'napari-dropsembles[contour]')"


def contour_available() -> bool:
    """Whether ITK's contour interpolation is installed (asked of the package metadata: ITK is not imported)."""
    try:
        metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return False
    return True


def _fine_grid(observation: Volume, axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(fine 0/1 array with the observed slices in place, its affine, refinement along ``axis``)."""
    spacing = observation.spacing
    refine = max(1, int(round(float(spacing[axis]) / float(np.delete(spacing, axis).min()))))
    data = np.asarray(observation.data) > 0.5
    shape = list(data.shape)
    shape[axis] = (shape[axis] - 1) * refine + 1
    fine = np.zeros(shape, dtype=np.uint8)
    index = [slice(None)] * 3
    index[axis] = slice(0, None, refine)
    fine[tuple(index)] = data
    affine = np.array(observation.affine, dtype=float)
    affine[:3, axis] /= refine
    return fine, affine, refine


def contour_interpolate(
    observation: Volume, target_affine: np.ndarray, target_shape: tuple[int, int, int], reading: SliceReading
) -> np.ndarray:
    """0/1 float32 foreground on the target grid: the observed slices filled in between by ITK."""
    spacing = observation.spacing
    axis = reading.axis if reading.axis is not None else thick_axis(spacing)
    axis = int(np.argmax(spacing)) if axis is None else int(axis)
    fine, affine, _ = _fine_grid(observation, axis)
    filled = _WORKER.fill(fine, axis) > 0 if fine.any() else fine > 0
    index_map = np.linalg.inv(affine) @ np.asarray(target_affine, dtype=float)
    grid = np.indices(tuple(target_shape)).reshape(3, -1).astype(np.float64)
    near = np.floor(index_map[:3, :3] @ grid + index_map[:3, 3:4] + 0.5).astype(np.int64)
    inside = np.all((near >= 0) & (near < np.array(filled.shape)[:, None]), axis=0)
    out = np.zeros(near.shape[1], dtype=np.float32)
    out[inside] = filled[near[0, inside], near[1, inside], near[2, inside]]
    return out.reshape(target_shape)


class _Worker:
    """The ITK worker process, started at the first request; one request at a time."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def fill(self, fine: np.ndarray, axis: int) -> np.ndarray:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                command = [sys.executable, "-m", "napari_dropsembles.core.slices.contour_worker"]
                self.process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                )
            process = self.process
            assert process.stdin is not None and process.stdout is not None
            try:
                send(process.stdin, np.array([axis], dtype=np.int64))
                send(process.stdin, np.ascontiguousarray(fine, dtype=np.uint8))
                return receive(process.stdout)
            except (OSError, ValueError, EOFError) as exc:
                self.process = None
                process.kill()
                why = type(exc).__name__
                raise InputError(f"ITK's contour interpolation stopped ({why}): reinstall {PACKAGE}") from exc

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


_WORKER = _Worker()
atexit.register(_WORKER.close)
