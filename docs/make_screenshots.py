"""Screenshots for the README, taken from the defaults after a user's own steps: open, Run, 3D.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--scene all|sample|ct|annotate|mri|docks]

The window is 1280 x 800 (a laptop screen), the Reconstruct dock open. The script does what a user does:
it opens files with the plugin's reader (or napari's sample menu), picks the input in the dock, presses
Run, moves the slice slider, rotates the 3D camera, clicks a table row, presses Suggest / Refine. It sets
no colour, opacity, visibility or contrast of any layer: what is shown is what a user gets.

- ``sample``: the bundled procedural vertebra (1 x 1 x 4 mm): ``screenshot_2d_variance.png`` (a slice
  between two drawn ones) and ``screenshot_3d_mesh.png`` (3D);
- ``ct``: the full TotalSegmentator CT with L1-L3 drawn on every 3rd axial slice (taken from its
  segmentation, ``../shared/real/``; without it the crop in ``docs/data/``): ``screenshot_ct_2d.png``,
  ``screenshot_ct_3d.png`` and ``screenshot_ct_table.png`` (L2 clicked in the structure table);
- ``annotate``: the sample's ground truth drawn on every 8th axial slice; Suggest twice, paint those
  slices (from the ground truth, as a user would), Refine, Suggest: ``screenshot_annotate_loop.png``;
- ``mri``: the real lumbar MRI sample (File > Open Sample; or ``--mri FILE``): ``screenshot_mri_2d.png`` and
  ``screenshot_mri_3d.png``;
- ``docks``: the four docks open at 1280 x 800: ``screenshot_docks.png``.

Each canvas is checked not to be black (share of lit pixels). Uses the bundled prior (``--prior`` else).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs"
DATA = DOCS / "data"
REAL = ROOT.parent / "shared" / "real"
PLUGIN, RECONSTRUCT = "napari-dropsembles", "Reconstruct with uncertainty"
EVERY = 3  # the CT annotation: one axial slice in 3 drawn
CT_LABELS = (22, 21, 20)  # L1, L2, L3 in TotalSegmentator's table (the dock names them from it)


def register_plugin() -> None:
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    if PLUGIN not in manager:
        manager.register(PluginManifest.from_file(ROOT / "napari.yaml"))


def settle(app, seconds: float = 0.5) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        app.processEvents()
        time.sleep(0.01)


def lit_share(image: np.ndarray, background_level: int = 60) -> float:
    """Share of pixels brighter than napari's dark theme background."""
    rgb = np.asarray(image)[..., :3].astype(int)
    return float((rgb.max(axis=-1) > background_level).mean())


def save_checked(viewer, path: Path, minimum_canvas_share: float, app) -> None:
    settle(app)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    share = lit_share(canvas)
    if share < minimum_canvas_share:
        raise SystemExit(f"{path.name}: the canvas looks empty ({100 * share:.2f}% lit pixels); not saved")
    window = viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path} ({window.shape[1]}x{window.shape[0]}, canvas {100 * share:.1f}% lit)")


def new_viewer():
    import napari

    viewer = napari.Viewer(show=True, title="napari-dropsembles")
    viewer.window._qt_window.resize(1280, 800)
    return viewer


def open_file(viewer, path: Path):
    return viewer.open(str(path), plugin=PLUGIN)[0]


def open_dock(viewer, prior: Path | None):
    """The Reconstruct dock, as Plugins > Dropsembles opens it; a prior chosen with Browse… when given."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, RECONSTRUCT)
    widget.sync = True  # a script: the run in this thread (the window is repainted between the layers)
    if prior is not None:
        widget.add_prior(prior)
    return widget


def press_run(widget, app) -> None:
    from napari_dropsembles._gui.state import RunState

    settle(app)
    started = time.perf_counter()
    widget.run_panel.button.click()
    if widget.status.state is not RunState.DONE:
        raise SystemExit(f"the run failed: {widget.status.message}")
    print(f"  run: {time.perf_counter() - started:.1f} s, {widget.status.message}")
    settle(app, 1.0)


def slide_to(viewer, world_mm: float, app) -> None:
    """Move the slider (the axis shown on it) to a world position, as a user drags it."""
    axis = viewer.dims.order[0]
    viewer.dims.set_point(axis, world_mm)
    settle(app)


def middle_gap_world(viewer, layer) -> float:
    """Halfway between two neighbouring drawn slices near the middle of the drawing, along the slider's axis."""
    axis = viewer.dims.order[0]
    data = np.asarray(layer.data)
    others = tuple(a for a in range(data.ndim) if a != axis)
    drawn = np.nonzero(data.any(axis=others))[0]
    middle = drawn[len(drawn) // 2 - 1 : len(drawn) // 2 + 1]
    index = np.zeros(data.ndim)
    index[axis] = middle.mean() if len(middle) == 2 else drawn.mean()
    return float(np.asarray(layer.data_to_world(index))[axis])


def zoom_in(viewer, layer, factor: float, app) -> None:
    """The mouse wheel over the drawn structure: the view centred on it, ``factor`` times closer."""
    data = np.asarray(layer.data)
    box = np.array([np.argwhere(data).min(axis=0), np.argwhere(data).max(axis=0)], float)
    centre = np.asarray(layer.data_to_world(box.mean(axis=0)))
    viewer.scene.camera.center = tuple(centre[list(viewer.dims.displayed)])
    viewer.scene.camera.zoom *= factor
    settle(app)


def go_3d(viewer, app, angles=None) -> None:
    """The 2D/3D button; then a drag of the camera to an oblique view."""
    viewer.dims.ndisplay = 3
    settle(app, 1.0)
    if angles is not None:
        viewer.scene.camera.angles = angles
    settle(app, 1.0)


# --------------------------------------------------------------------------- scenes


def sample_scene(args, app) -> None:
    viewer = new_viewer()
    viewer.open_sample(PLUGIN, "vertebra")  # File > Open Sample > Dropsembles
    widget = open_dock(viewer, args.prior)
    observation = viewer.layers["vertebra observation"]
    widget.input.value = observation
    press_run(widget, app)
    slide_to(viewer, middle_gap_world(viewer, observation), app)
    save_checked(viewer, args.out_dir / "screenshot_2d_variance.png", 0.02, app)
    go_3d(viewer, app, angles=(-20.0, 35.0, 130.0))
    save_checked(viewer, args.out_dir / "screenshot_3d_mesh.png", 0.02, app)
    viewer.close()


def ct_files(folder: Path) -> tuple[Path, Path]:
    """The CT and L1-L3 drawn on every 3rd axial slice of it (a user's sparse annotation), written to ``folder``."""
    from napari_dropsembles.core.io.volumes import read_volume, write_volume

    full = REAL / "example_ct.nii.gz"
    if full.is_file():
        ct, segmentation = full, read_volume(REAL / "example_seg.nii.gz")
        labels = np.where(np.isin(np.asarray(segmentation.data), CT_LABELS), segmentation.data, 0)
    else:  # a checkout without ../shared: the crop in docs/data (already one slice in 3)
        ct, dense = DATA / "ct_lumbar.nii.gz", read_volume(DATA / "lumbar_L1_L3_dense.nii.gz")
        segmentation, labels = dense, np.asarray(dense.data)
    drawn = np.zeros_like(np.asarray(labels), dtype=np.uint8)
    slices = np.nonzero(np.asarray(labels).any(axis=(0, 1)))[0]
    keep = slices[slices % EVERY == slices[0] % EVERY + 1]
    drawn[:, :, keep] = np.asarray(labels)[:, :, keep]
    path = write_volume(folder / "L1-L3 drawn.nii.gz", segmentation.with_data(drawn), dtype=np.uint8)
    return ct, path


def ct_scene(args, app) -> None:
    viewer = new_viewer()
    ct_path, drawn_path = ct_files(Path(tempfile.mkdtemp(prefix="dropsembles_ct_")))
    open_file(viewer, ct_path)
    drawn = open_file(viewer, drawn_path)
    widget = open_dock(viewer, args.prior)
    widget.input.value = drawn  # Label: "each label separately" is the default for a few labels
    press_run(widget, app)
    slide_to(viewer, middle_gap_world(viewer, drawn), app)
    zoom_in(viewer, drawn, 1.7, app)
    save_checked(viewer, args.out_dir / "screenshot_ct_2d.png", 0.02, app)
    go_3d(viewer, app, angles=(0.0, -60.0, 90.0))
    save_checked(viewer, args.out_dir / "screenshot_ct_3d.png", 0.02, app)
    viewer.dims.ndisplay = 2  # back to 2D: the scan and the drawing shown again
    viewer.dims.order = (0, 2, 1)  # the left-right axis on the slider: a sagittal slice across the drawn ones
    rows = [row.label for row in widget.table.rows]
    row = rows.index(21) if 21 in rows else 0
    widget.table.selectRow(row)
    widget.table.cellClicked.emit(row, 0)  # a click on L2: highlighted, the slice and the view centred on it
    save_checked(viewer, args.out_dir / "screenshot_ct_table.png", 0.02, app)
    viewer.close()


def annotate_scene(args, app) -> None:
    from napari_dropsembles.core.config.paths import bundled_sample_paths
    from napari_dropsembles.core.io.volumes import read_volume, write_volume

    truth_path = bundled_sample_paths()["ground_truth"]
    if not truth_path.is_file():
        print("annotate scene skipped: the bundled sample's ground truth is not installed")
        return
    truth = read_volume(truth_path)
    sparse = np.zeros_like(truth.data)
    sparse[:, :, ::8] = truth.data[:, :, ::8]
    folder = Path(tempfile.mkdtemp(prefix="dropsembles_annotate_"))
    annotation_path = write_volume(folder / "vertebra annotation.nii.gz", truth.with_data(sparse), dtype=np.uint8)
    viewer = new_viewer()
    annotation = open_file(viewer, annotation_path)
    widget = open_dock(viewer, args.prior)
    widget.input.value = annotation
    press_run(widget, app)
    panel = widget.annotate
    for _ in range(2):  # the user: the two best slices painted (here the true labels of the slice), then Refine
        panel.suggest_button.click()
        settle(app)
        axis, index = suggested_slice(viewer)
        where = [slice(None)] * 3
        where[axis] = index
        plane = np.zeros(truth.shape, bool)
        plane[tuple(where)] = True
        annotation.data_setitem(np.nonzero(plane & (np.asarray(truth.data) > 0)), 1)
    panel.refine_button.click()
    settle(app, 1.0)
    panel.suggest_button.click()  # where to annotate next, outlined
    widget.scroll_area.ensureWidgetVisible(panel.history_table)
    save_checked(viewer, args.out_dir / "screenshot_annotate_loop.png", 0.02, app)
    viewer.close()


def suggested_slice(viewer) -> tuple[int, int]:
    from napari_dropsembles._gui.layers import TAG, role_of

    outline = next(layer for layer in viewer.layers if role_of(layer) == "suggestion")
    axis, index = outline.metadata[TAG]["slice"]
    return int(axis), int(index)


def mri_scene(args, app) -> None:
    """The real lumbar MRI sample: File > Open Sample, Run with the defaults, 2D across the slices, then 3D.
    ``--mri FILE`` shoots another MRI segmentation instead (its image beside it, ``seg`` -> ``image``)."""
    viewer = new_viewer()
    if args.mri:
        for image in sorted(args.mri.parent.glob(args.mri.name.replace("seg", "image"))):
            open_file(viewer, image)
        segmentation = open_file(viewer, args.mri)
    else:
        viewer.open_sample(PLUGIN, "lumbar_mri")  # File > Open Sample > Dropsembles > Real lumbar MRI
        segmentation = viewer.layers["lumbar MRI segmentation"]
    widget = open_dock(viewer, args.prior)
    widget.input.value = segmentation
    press_run(widget, app)
    slide_to(viewer, middle_gap_world(viewer, segmentation), app)
    save_checked(viewer, args.out_dir / "screenshot_mri_2d.png", 0.02, app)
    go_3d(viewer, app, angles=(0.0, -60.0, 90.0))
    save_checked(viewer, args.out_dir / "screenshot_mri_3d.png", 0.02, app)
    viewer.close()


def docks_scene(args, app) -> None:
    viewer = new_viewer()
    viewer.open_sample(PLUGIN, "vertebra")
    for name in (RECONSTRUCT, "Train a prior", "Evaluate against ground truth", "Batch (cohort)"):
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    settle(app, 1.0)
    window = viewer.window._qt_window
    print(f"  window with four docks: {window.width()} x {window.height()}")
    save_checked(viewer, args.out_dir / "screenshot_docks.png", 0.01, app)
    viewer.close()


SCENES = {"sample": sample_scene, "ct": ct_scene, "annotate": annotate_scene, "mri": mri_scene, "docks": docks_scene}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", type=Path, help="a prior .safetensors (default: the bundled one)")
    parser.add_argument("--mri", type=Path, help="an MRI segmentation for the mri scene (its image beside it)")
    parser.add_argument("--scene", choices=("all", *SCENES), default="all")
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    from qtpy.QtWidgets import QApplication

    register_plugin()
    app = QApplication.instance() or QApplication([])
    for name, scene in SCENES.items():
        if args.scene in ("all", name):
            print(f"scene {name}")
            scene(args, app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
