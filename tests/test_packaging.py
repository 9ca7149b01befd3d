"""The manifest and bundled files are found from an editable install and from a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DISCOVER = """
import sys
from npe2 import PluginManager
pm = PluginManager()
pm.discover(include_npe1=False)
manifest = pm.get_manifest("napari-dropsembles")
import napari_dropsembles
from napari_dropsembles.core.config.paths import bundled_prior_path, bundled_sample_paths
print(napari_dropsembles.__file__)
print(bundled_prior_path().is_file(), all(p.is_file() for p in bundled_sample_paths().values()))
print(sorted(w.display_name for w in manifest.contributions.widgets))
"""


def _discover(env_path: str | None, cwd: Path) -> list[str]:
    """Run the discovery in a fresh interpreter outside the checkout (``-c`` puts the cwd on sys.path)."""
    import os

    env = {**os.environ, "PYTHONPATH": env_path} if env_path else dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-c", DISCOVER], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_editable_install_finds_the_manifest_and_bundled_files(tmp_path):
    lines = _discover(None, tmp_path)
    assert lines[1] == "True True"
    assert "Reconstruct with uncertainty" in lines[2]


def test_wheel_carries_manifest_prior_and_sample(tmp_path):
    pytest.importorskip("build")
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(out.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_dropsembles/napari.yaml" in names
    assert "napari_dropsembles/sample_data/lumbar_vertebra_prior.safetensors" in names
    assert "napari_dropsembles/sample_data/vertebra_observation.nii.gz" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "napari.manifest" in text and "napari_dropsembles:napari.yaml" in text
    assert wheel.stat().st_size < 15e6
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    lines = _discover(str(site), tmp_path)
    assert lines[0].startswith(str(site))  # the wheel's copy, not the checkout
    assert lines[1] == "True True"
    assert "Reconstruct with uncertainty" in lines[2]
