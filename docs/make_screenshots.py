"""Screenshots for the README: what a user sees in napari with the Reconstruct widget, default display.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

Two scenes, each with the window at 1280 x 800 (a laptop screen) and the widget docked:

- real anatomy (``docs/data/``, cropped from ``../shared/real/``): lumbar vertebrae L1-L3 drawn on
  every 3rd axial slice (9 mm) over their CT, reconstructed label by label:
  ``screenshot_ct_2d.png`` (an axial slice between two drawn ones: outlines in the labels' colours,
  variance heatmap with its colour bar, the named structure table), ``screenshot_ct_3d.png`` (the
  mesh coloured by variance, colour bar) and ``screenshot_ct_table.png`` (a sagittal slice, L2
  selected in the table and highlighted);
- the bundled sample (a procedural vertebra at 1 x 1 x 4 mm): ``screenshot_2d_variance.png`` and
  ``screenshot_3d_mesh.png``;
- annotate next (``--scene annotate``): the sample's dense ground truth annotated on every 8th axial slice
  of its own grid; one round of the loop (the two suggested slices painted from the ground truth,
  Refine), then the next suggestion outlined, with the history in the dock: ``screenshot_annotate_loop.png``.

Each canvas is checked not to be black. Uses the bundled prior; without it, ``--prior`` or a small
prior pretrained on the spot.
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


def register_plugin() -> None:
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    if "napari-dropsembles" not in manager:
        manager.register(PluginManifest.from_file(ROOT / "napari.yaml"))


def find_inputs(args) -> tuple[Path, Path | None, Path, list[str]]:
    """(observation, ground truth or None, prior, notes on what was used)."""
    from napari_dropsembles.core.paths import bundled_prior_path, bundled_sample_paths

    notes = []
    sample = bundled_sample_paths()
    observation, truth = args.observation, args.ground_truth
    if observation is None:
        if sample["observation"].is_file():
            observation = sample["observation"]
            truth = truth or (sample["ground_truth"] if sample["ground_truth"].is_file() else None)
            notes.append("bundled sample")
        else:
            from napari_dropsembles.core.simulate import simulate_case

            case = simulate_case(Path(tempfile.mkdtemp(prefix="dropsembles_case_")), seed=0)
            observation, truth = case["observation"], case["ground_truth"]
            notes.append("simulated case (no bundled sample)")
    prior = args.prior
    if prior is None:
        if bundled_prior_path().is_file():
            prior = bundled_prior_path()
            notes.append("bundled prior")
        else:
            prior = pretrain_small_prior(Path(tempfile.gettempdir()) / "dropsembles_screenshot_prior.safetensors",
                                         args.pretrain_steps)
            notes.append(f"a small prior pretrained here ({args.pretrain_steps} steps; no bundled prior)")
    return Path(observation), (Path(truth) if truth else None), Path(prior), notes


def pretrain_small_prior(path: Path, steps: int) -> Path:
    if path.is_file():
        return path
    from napari_dropsembles.core.checkpoint import save_prior
    from napari_dropsembles.core.config import ModelConfig
    from napari_dropsembles.core.predict import run_to_end
    from napari_dropsembles.core.pretrain import PretrainConfig, pretrain_steps

    started = time.perf_counter()
    config = PretrainConfig(steps=steps, samples=max(32, steps // 2), batch_size=8, lr=2e-3, seed=0)
    prior = run_to_end(pretrain_steps(ModelConfig(dropout=0.2), config))
    print(f"pretrained a small prior in {time.perf_counter() - started:.0f} s -> {path}")
    return save_prior(prior, path)


def settle(app, seconds: float = 0.5) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        app.processEvents()
        time.sleep(0.01)


def zoom_on(viewer, centre_mm, size_mm, app, fill: float = 0.8) -> None:
    """Centre the camera on a box and zoom so that it fills ``fill`` of the canvas (keeps the 3D angles)."""
    displayed = list(viewer.dims.displayed)
    height, width = viewer.screenshot(canvas_only=True, flash=False).shape[:2]
    size = np.maximum(np.asarray(size_mm, dtype=float), 1e-6)
    if len(displayed) == 2:
        viewer.scene.camera.center = (0.0, *[float(centre_mm[d]) for d in displayed])
        viewer.scene.camera.zoom = fill * min(height / size[displayed[0]], width / size[displayed[1]])
    else:
        viewer.scene.camera.center = tuple(float(centre_mm[d]) for d in displayed)
        viewer.scene.camera.zoom = fill * min(height, width) / float(np.linalg.norm(size))
    settle(app)


def single_colour(layer, colour: str) -> None:
    """Show every label of a Labels layer in one colour."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict={None: colour, 0: "transparent"})


def lit_share(image: np.ndarray, background_level: int = 60) -> float:
    """Share of pixels brighter than napari's dark theme background."""
    rgb = np.asarray(image)[..., :3].astype(int)
    return float((rgb.max(axis=-1) > background_level).mean())


def save_checked(viewer, path: Path, minimum_canvas_share: float) -> None:
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    share = lit_share(canvas)
    if share < minimum_canvas_share:
        raise SystemExit(f"{path.name}: the canvas looks empty ({100 * share:.2f}% lit pixels); not saved")
    window = viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path} ({window.shape[1]}x{window.shape[0]}, canvas {100 * share:.1f}% lit)")


def open_widget(viewer, prior_path: Path, steps: int | None):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-dropsembles", "Reconstruct with uncertainty")
    widget.sync = True  # a script: run in this thread, deterministic
    widget.device.value = "cpu" if not __import__("torch").cuda.is_available() else "auto"
    widget.add_prior(prior_path)
    if steps is not None:
        widget.steps.value = steps
    return widget


def run_widget(widget, app) -> dict:
    from napari_dropsembles._gui.layers import role_of
    from napari_dropsembles._gui.state import RunState

    settle(app)
    started = time.perf_counter()
    widget.run()
    if widget.status.state is not RunState.DONE:
        raise SystemExit(f"reconstruction failed: {widget.status.message}")
    print(f"reconstructed in {time.perf_counter() - started:.1f} s: {widget.status.message}")
    settle(app)
    return {role_of(layer): layer for layer in widget.viewer.layers if role_of(layer)}


def object_box(widget) -> tuple[np.ndarray, np.ndarray]:
    """(centre, size) in world mm of the thresholded mean."""
    structures = widget.current.structures
    inside = np.argwhere(structures.mean.data >= structures.threshold)
    corners = structures.mean.index_to_world(np.array([inside.min(axis=0), inside.max(axis=0)]))
    return corners.mean(axis=0), np.abs(corners[1] - corners[0])


def new_viewer():
    import napari

    viewer = napari.Viewer(show=True, title="napari-dropsembles")
    viewer.window._qt_window.resize(1280, 800)
    return viewer


def ct_scene(args, prior_path: Path, app) -> None:
    """L1-L3 observed every 3rd axial slice, over the CT: 2D, 3D and the table."""
    import json

    viewer = new_viewer()
    [ct] = viewer.open(str(DATA / "ct_lumbar.nii.gz"), plugin="napari-dropsembles")
    ct.name, ct.contrast_limits = "CT", (-300.0, 1200.0)
    [observation] = viewer.open(str(DATA / "lumbar_L1_L3_9mm.nii.gz"), plugin="napari-dropsembles")
    observation.name = "L1-L3, 9 mm slices"
    names = {int(k): v for k, v in json.loads((DATA / "lumbar_labels.json").read_text()).items()}
    observation.features = {"index": list(names), "name": list(names.values())}
    observation.opacity = 0.5
    widget = open_widget(viewer, prior_path, args.steps)
    widget.input.value = observation
    widget.label.value = "each"
    layers = run_widget(widget, app)
    centre, size = object_box(widget)
    observation.visible = False  # the drawn slices are under the outlines; the CT is what a reader looks at
    # the default 2D view (axial, the thick-slice axis on the slider) at a slice between two drawn ones
    drawn_z = observation.data_to_world((0, 0, 7))[2]
    viewer.dims.set_point(2, drawn_z + 4.5)
    viewer.layers.selection.active = layers["variance"]
    zoom_on(viewer, centre, size, app, fill=0.9)
    save_checked(viewer, args.out_dir / "screenshot_ct_2d.png", 0.02)
    default_order = tuple(viewer.dims.order)
    # the table: L2 selected and highlighted, seen on a sagittal slice across the drawn slices
    viewer.dims.order = (0, 2, 1)
    viewer.dims.set_point(0, centre[0])
    row = [r.label for r in widget.table.rows].index(21)
    widget.table.selectRow(row)
    widget._select_row(row)
    zoom_on(viewer, widget.table.rows[row].centre_mm, size, app, fill=0.9)
    save_checked(viewer, args.out_dir / "screenshot_ct_table.png", 0.02)
    layers["thresholded"].show_selected_label = False
    viewer.dims.order = default_order
    # 3D: the mesh alone, coloured by variance, with its colour bar
    viewer.dims.ndisplay = 3
    ct.visible = False
    viewer.layers.selection.active = layers["mesh"]
    viewer.reset_view()
    viewer.camera.angles = (0.0, -60.0, 90.0)
    viewer.camera.zoom *= 1.4
    settle(app)
    save_checked(viewer, args.out_dir / "screenshot_ct_3d.png", 0.02)
    viewer.close()


def sample_scene(args, prior_path: Path, observation_path: Path, truth_path: Path | None, app) -> None:
    viewer = new_viewer()
    [observation] = viewer.open(str(observation_path), plugin="napari-dropsembles")
    observation.name = "vertebra observation"
    if truth_path is not None:
        [truth] = viewer.open(str(truth_path), plugin="napari-dropsembles")
        truth.name, truth.visible = "ground truth", False
    widget = open_widget(viewer, prior_path, args.steps)
    widget.input.value = observation
    widget.spacing.value = args.spacing
    layers = run_widget(widget, app)
    centre, size = object_box(widget)
    observation.opacity = 0.35
    single_colour(observation, "#3fb6ff")  # the drawn slices, blue
    viewer.dims.set_point(2, centre[2] + 2.0)  # between two 4 mm slices
    viewer.layers.selection.active = layers["variance"]
    zoom_on(viewer, centre, size, app)
    save_checked(viewer, args.out_dir / "screenshot_2d_variance.png", 0.02)
    viewer.dims.ndisplay = 3
    observation.visible = False
    viewer.layers.selection.active = layers["mesh"]
    viewer.reset_view()
    viewer.camera.angles = (-20.0, 35.0, 130.0)
    settle(app)
    save_checked(viewer, args.out_dir / "screenshot_3d_mesh.png", 0.02)
    viewer.close()


def annotate_scene(args, prior_path: Path, truth_path: Path | None, app) -> None:
    """The annotate-next loop on a sparse annotation of the sample's ground truth (every 8th axial slice)."""
    from napari_dropsembles.core.io import read_volume

    if truth_path is None:
        print("annotate scene skipped: it needs the sample's ground truth")
        return
    viewer = new_viewer()
    truth = read_volume(truth_path)
    sparse = np.zeros_like(truth.data)
    sparse[:, :, ::8] = truth.data[:, :, ::8]
    annotation = viewer.add_labels(sparse, name="vertebra annotation", **truth.napari_frame())
    viewer.add_labels(truth.data, name="vertebra ground truth", visible=False, **truth.napari_frame())
    widget = open_widget(viewer, prior_path, args.steps)
    widget.input.value = annotation
    widget.spacing.value = args.spacing
    layers = run_widget(widget, app)
    panel = widget.annotate
    for _ in range(2):  # the user: the two best slices painted (here from the ground truth), then Refine
        panel.suggest_button.click()
        axis, index = layers_suggestion(viewer)
        where = [slice(None)] * 3
        where[axis] = index
        plane = np.zeros(truth.shape, bool)
        plane[tuple(where)] = True
        annotation.data_setitem(np.nonzero(plane & (np.asarray(truth.data) > 0)), 1)
    panel.refine_button.click()
    settle(app)
    panel.suggest_button.click()  # where to annotate next, outlined (the whole slice framed)
    corners = truth.index_to_world(np.array([[0, 0, 0], np.asarray(truth.shape) - 1]))
    zoom_on(viewer, corners.mean(axis=0), np.abs(corners[1] - corners[0]) + 2.0, app, fill=0.95)
    widget.scroll_area.ensureWidgetVisible(panel.history_table)
    settle(app)
    save_checked(viewer, args.out_dir / "screenshot_annotate_loop.png", 0.02)
    print("history:", [(r, s, round(e.voxels), d) for r, s, e, d, *_ in panel.history[widget.current.frame.source_id]])
    assert layers  # the result layers the loop updated in place
    viewer.close()


def layers_suggestion(viewer) -> tuple[int, int]:
    from napari_dropsembles._gui.layers import TAG, role_of

    outline = next(layer for layer in viewer.layers if role_of(layer) == "suggestion")
    axis, index = outline.metadata[TAG]["slice"]
    return int(axis), int(index)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--observation", type=Path, help="a low-resolution segmentation (default: the sample)")
    parser.add_argument("--ground-truth", type=Path, help="its dense ground truth (shown hidden)")
    parser.add_argument("--prior", type=Path, help="a prior .safetensors (default: the bundled one)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="for the fallback prior")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the widget's)")
    parser.add_argument("--spacing", type=float, default=0.0, help="output spacing mm (0: the input's finest)")
    parser.add_argument("--scene", choices=("all", "ct", "sample", "annotate"), default="all")
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    args = parser.parse_args(argv)

    observation_path, truth_path, prior_path, notes = find_inputs(args)
    print("using: " + ", ".join(notes))
    from qtpy.QtWidgets import QApplication

    register_plugin()
    app = QApplication.instance() or QApplication([])
    if args.scene in ("all", "ct"):
        ct_scene(args, prior_path, app)
    if args.scene in ("all", "sample"):
        sample_scene(args, prior_path, observation_path, truth_path, app)
    if args.scene in ("all", "annotate"):
        annotate_scene(args, prior_path, truth_path, app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
