"""Faults inside napari: a worker that raises anything gives one line; a full disk while saving a layer
from the viewer leaves no partial file and the layer as it was."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from napari_dropsembles._gui.state import RunState
from napari_dropsembles._gui.workers import Task
from napari_dropsembles.core.config.progress import Progress

from . import gui_support
from .conftest import sphere_volume
from .gui_support import add_volume, requires_gui

viewer = gui_support.viewer  # fixture


def _run_failing(error: BaseException):
    def factory(cancel):
        yield Progress("finetune", 1, 3, loss=0.5)
        raise error

    finished = []
    Task(factory, on_progress=lambda p: None, on_finished=finished.append, sync=True).start()
    return finished[0]


@pytest.mark.parametrize(
    "error, words",
    [
        (MemoryError(), "out of memory"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/mean.nii.gz"), "disk is full"),
        (OSError(errno.EFBIG, "File too large"), "size limit"),
        (RuntimeError("CUDA error: an illegal memory access\nCUDA kernel errors might be reported\n\nat"), "CUDA"),
        (ValueError(""), "ValueError"),
    ],
)
def test_a_worker_that_raises_gives_one_line(error, words):
    outcome = _run_failing(error)
    assert outcome.state is RunState.FAILED
    assert words in outcome.message and "\n" not in outcome.message


@requires_gui
@pytest.mark.gui
def test_disk_full_while_saving_from_the_viewer_keeps_the_layer_and_writes_nothing(viewer, tmp_path, monkeypatch):
    import nibabel

    layer = add_volume(viewer, sphere_volume(), "sphere")
    before = np.array(layer.data, copy=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nibabel, "save", full)
    target = tmp_path / "sphere.nii.gz"
    with pytest.raises(Exception) as caught:
        viewer.layers.save(str(target), selected=False, plugin="napari-dropsembles")
    text = str(caught.value)
    assert "disk is full" in text and "free some space or write elsewhere" in text
    assert "\n" not in text.strip() and "cannot read or write" not in text  # one line, worded once
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary
    assert list(viewer.layers) == [layer] and np.array_equal(layer.data, before)
