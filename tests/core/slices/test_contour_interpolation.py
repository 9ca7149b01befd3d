"""The contour-interpolation baseline (ITK, optional) and how its absence is reported."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.cli.printing import metrics_table
from napari_dropsembles.core.data.slicing import keep_every_kth_slice
from napari_dropsembles.core.scoring import evaluate
from napari_dropsembles.core.scoring.evaluate import score_baselines
from napari_dropsembles.core.slices import baselines
from napari_dropsembles.core.slices.contour_interpolation import SKIPPED, contour_available
from tests.conftest import sphere_volume

needs_itk = pytest.mark.skipif(not contour_available(), reason="itk-morphologicalcontourinterpolation not installed")


@needs_itk
@pytest.mark.slow  # the first ITK import takes 10-15 s
def test_contour_interpolation_fills_between_the_slices_of_a_sphere():
    dense = sphere_volume(radius_mm=9.0, spacing_mm=(1.0, 1.0, 1.0), size_mm=26.0)
    observation = keep_every_kth_slice(dense, 4, axis=2, offset=1)
    filled = baselines.interpolate_observation(observation, dense.affine, dense.shape, "contour")
    truth = np.asarray(dense.data) > 0
    assert set(np.unique(filled)) <= {0.0, 1.0}
    overlap = 2 * (filled.astype(bool) & truth).sum() / (filled.sum() + truth.sum())
    assert overlap > 0.85
    kept = np.asarray(observation.data) > 0  # the drawn slices are kept as drawn
    assert (filled[..., 1::4].astype(bool) == kept).all()


def test_without_itk_the_baseline_is_reported_as_skipped(monkeypatch):
    monkeypatch.setattr(evaluate, "contour_available", lambda: False)
    dense = sphere_volume(radius_mm=6.0, spacing_mm=(1.0, 1.0, 1.0), size_mm=18.0)
    observation = keep_every_kth_slice(dense, 3, axis=2, offset=1)
    scores = score_baselines(observation, dense)
    assert scores["contour"] == {"skipped": SKIPPED}
    assert {"nearest", "linear", "shape_based"} <= set(scores)
    table = metrics_table(scores)
    assert "contour: skipped: itk-morphologicalcontourinterpolation is not installed" in table


def test_asking_for_the_contour_baseline_without_itk_is_one_line(monkeypatch):
    monkeypatch.setattr(baselines, "contour_available", lambda: False)
    dense = sphere_volume()
    with pytest.raises(baselines.InputError, match="skipped: itk-morphologicalcontourinterpolation"):
        baselines.interpolate_observation(dense, dense.affine, dense.shape, "contour")


@needs_itk
@pytest.mark.slow  # ITK's import in the worker takes 10-15 s
def test_itk_runs_in_its_own_process_so_a_caller_with_simpleitk_exits_cleanly():
    import subprocess
    import sys

    script = """
import sys
import SimpleITK  # MetaImage reading: its own ITK, which crashed a process that loaded ITK's package too
from napari_dropsembles.core.data.slicing import keep_every_kth_slice
from napari_dropsembles.core.slices import baselines
from tests.conftest import sphere_volume
dense = sphere_volume(radius_mm=6.0, spacing_mm=(1.0, 1.0, 1.0), size_mm=18.0)
observation = keep_every_kth_slice(dense, 3, axis=2, offset=1)
for _ in range(3):
    filled = baselines.interpolate_observation(observation, dense.affine, dense.shape, "contour")
assert filled.sum() > 0 and "itk" not in sys.modules
print("done")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "done"
