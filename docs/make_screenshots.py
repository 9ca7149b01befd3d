"""Screenshots for the README: the sample vertebra reconstructed in napari with the Reconstruct widget.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

Writes ``docs/screenshot_2d_variance.png`` (a slice across the thick slices: observation,
reconstruction outline and the variance heatmap) and ``docs/screenshot_3d_mesh.png`` (the mesh
coloured by variance), full window, and checks that neither is black. Uses the bundled sample
and prior; without them, ``--observation``/``--prior`` or, as a last resort, a simulated case
(``napari-dropsembles simulate``) and a small prior pretrained on the spot.
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
        viewer.scene.camera.center = tuple(float(c) for c in centre_mm)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--observation", type=Path, help="a low-resolution segmentation (default: the sample)")
    parser.add_argument("--ground-truth", type=Path, help="its dense ground truth (shown hidden)")
    parser.add_argument("--prior", type=Path, help="a prior .safetensors (default: the bundled one)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="for the fallback prior")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the widget's)")
    parser.add_argument("--spacing", type=float, default=0.0, help="output spacing mm (0: the input's finest)")
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    args = parser.parse_args(argv)

    observation_path, truth_path, prior_path, notes = find_inputs(args)
    print("using: " + ", ".join(notes))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dropsembles._gui.layers import role_of
    from napari_dropsembles._gui.state import RunState

    register_plugin()
    viewer = napari.Viewer(show=True, title="napari-dropsembles")
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    [observation] = viewer.open(str(observation_path), plugin="napari-dropsembles")
    observation.name = "vertebra observation"
    observation.opacity = 0.45
    if truth_path is not None:
        [truth] = viewer.open(str(truth_path), plugin="napari-dropsembles")
        truth.name, truth.visible = "ground truth", False
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-dropsembles", "Reconstruct with uncertainty")
    widget.sync = True  # a script: run in this thread, deterministic
    widget.device.value = "cpu" if not __import__("torch").cuda.is_available() else "auto"
    widget.add_prior(prior_path)
    widget.input.value = observation
    widget.spacing.value = args.spacing
    if args.steps is not None:
        widget.steps.value = args.steps
    settle(app)
    started = time.perf_counter()
    widget.run()
    if widget.status.state is not RunState.DONE:
        raise SystemExit(f"reconstruction failed: {widget.status.message}")
    print(f"reconstructed in {time.perf_counter() - started:.1f} s: {widget.status.message}")
    layers = {role_of(layer): layer for layer in viewer.layers if role_of(layer)}
    structures = widget.current.structures

    # 2D: a slice across the thick slices, through the middle of the object: the observation (blue),
    # the mean occupancy (grey) and the variance heatmap (additive) on top
    thick_axis = int(np.argmax(observation.scale))
    order = [a for a in range(3) if a != thick_axis]
    viewer.dims.order = (order[0], order[1], thick_axis)  # slide along an in-plane axis
    inside = np.argwhere(structures.mean.data >= structures.threshold)
    corners = structures.mean.index_to_world(np.array([inside.min(axis=0), inside.max(axis=0)]))
    centre = corners.mean(axis=0)
    viewer.dims.set_point(order[0], centre[order[0]])
    layers["mesh"].visible = False
    layers["thresholded"].visible = False
    layers["mean"].opacity = 0.3  # the reconstruction, grey
    observation.opacity = 0.4
    single_colour(observation, "#3fb6ff")  # the observed slices, blue
    viewer.layers.selection.active = layers["variance"]
    viewer.reset_view()
    zoom_on(viewer, centre, np.abs(corners[1] - corners[0]), app)
    save_checked(viewer, args.out_dir / "screenshot_2d_variance.png", 0.02)

    # 3D: the mesh coloured by variance (same contrast limits as the heatmap)
    viewer.dims.ndisplay = 3
    for role in ("mean", "variance", "thresholded"):
        layers[role].visible = False
    observation.visible = False
    layers["mesh"].visible = True
    viewer.layers.selection.active = layers["mesh"]
    viewer.reset_view()
    viewer.scene.camera.angles = (-20.0, 35.0, 130.0)
    zoom_on(viewer, centre, np.abs(corners[1] - corners[0]), app, fill=1.1)
    save_checked(viewer, args.out_dir / "screenshot_3d_mesh.png", 0.02)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
