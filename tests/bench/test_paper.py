"""The paper benchmark (``python -m bench.paper``) end to end on a tiny configuration: every table
cell is a computed finite number, every figure a readable PNG, RESULTS.md generated from them."""

from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _numeric_cells(table: dict):
    for row in table["rows"]:
        assert len(row) == len(table["columns"]), table["name"]
        yield from row[table["labels"] :]


@pytest.mark.slow
def test_paper_tiny_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from matplotlib import image

    from bench.paper.__main__ import run

    results = run("tiny", tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["experiments"]) == {"toy2d", "digits", "vertebrae"}
    tables = [t for exp in data["experiments"].values() for t in exp["tables"]]
    names = {t["name"] for t in tables}
    for required in ("toy2d_main", "toy2d_no_shift", "toy2d_ensemble_size", "toy2d_ewc", "digits_main",
                     "digits_corruption", "vertebrae_main", "vertebrae_corruption", "vertebrae_ensemble_size",
                     "vertebrae_ewc"):
        assert required in names
    for table in tables:
        assert table["rows"], table["name"]
        for value in _numeric_cells(table):
            assert isinstance(value, (int, float)) and math.isfinite(value), (table["name"], value)
    methods = {row[0] for row in next(t for t in tables if t["name"] == "vertebrae_main")["rows"]}
    assert {"single", "MC dropout", "deep ensemble", "Dropsembles", "linear (interp.)"} <= methods
    assert results["headline"]["vertebrae"][0]["flop_ratio"] < 1.0  # one pretraining instead of M

    # RESULTS.md: every table (its "### name" section, and the headline) holds finite numbers only
    text = (tmp_path / "RESULTS.md").read_text()
    assert "python -m bench.paper" in text
    sections = {part.split("\n", 1)[0].strip(): part for part in text.split("\n### ")[1:]}
    sections["headline"] = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    checked = 0
    for name, labels in [(t["name"], t["labels"]) for t in tables] + [("headline", 2)]:
        rows = [line for line in sections[name].splitlines() if line.startswith("|")][2:]
        assert rows, name
        for line in rows:
            for cell in [c.strip() for c in line.strip().strip("|").split("|")][labels:]:
                assert math.isfinite(float(cell)), (name, cell)
                checked += 1
    assert checked > 100

    figures = [f for exp in data["experiments"].values() for f in exp["figures"]]
    assert len(figures) >= 9
    for figure in figures:
        path = tmp_path / figure
        assert path.suffix == ".png" and path.stat().st_size > 1000
        pixels = image.imread(os.fspath(path))
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
        assert f"]({figure})" in text  # linked from RESULTS.md
