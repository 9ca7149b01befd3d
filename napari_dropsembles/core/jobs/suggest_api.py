"""The suggest job, one call from a request to its outputs: reconstruct (or refine) as the reconstruct job
does, rank the slices to annotate next across the structures, and write the result folder with
``suggestions.json``. :func:`next_slices` is the ranking alone, for a result already in hand (the widget's
"Annotate next")."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config.progress import CancelFlag, Progress, drive
from ..io.atomic import atomic_folder, atomic_write_bytes
from ..io.output_paths import check_output_folder
from ..results.folder import STRUCTURES, save_structures
from ..results.structures import StructureSet
from .inputs import PathLike
from .reconstruct_api import ReconstructRequest, input_files, reconstruct_job_steps
from .structures import StructureSuggestion, structures_expected_error, suggest_structure_slices
from .suggest import DEFAULT_SCORE, ExpectedError

SUGGESTIONS = "suggestions.json"


@dataclass(eq=False)
class NextSlices:
    """What to annotate next (best first, ranked across the structures) and how far from done."""

    suggestions: list[StructureSuggestion]
    expected: ExpectedError
    axis: int | None  # the slice axis of the (first) structure


def next_slices(structures: StructureSet, n: int = 5, *, axis: int | None = None, score: str = DEFAULT_SCORE):
    """The ``n`` slices whose annotation is expected to remove the most error, and the expected error."""
    first = structures.results[structures.labels[0]]
    return NextSlices(
        suggest_structure_slices(structures, n, axis=axis, score=score),
        structures_expected_error(structures),
        None if first.reading is None else first.reading.axis,
    )


def suggestions_content(structures: StructureSet, found: NextSlices, observation: str) -> dict:
    """The content of ``suggestions.json``; structures read per label name the ones each slice helps."""
    expected = found.expected
    labels = {"labels": structures.labels} if structures.split else {}
    return {
        "observation": observation,
        "expected_error": {
            "voxels": round(expected.voxels, 2),
            "surface_voxels": expected.surface_voxels,
            "volume_ml": round(expected.volume_ml, 4),
            "text": expected.text,
        },
        "slice_axis": found.axis,
        "refine_rounds": structures.rounds,
        "suggestions": [
            {
                "rank": rank,
                "axis": s.axis,
                "index": s.index,
                "world_mm": round(s.world_mm, 3),
                "score": round(s.score, 3),
                "kind": s.kind,
                **({"labels": list(s.labels)} if structures.split else {}),
            }
            for rank, s in enumerate(found.suggestions, 1)
        ],
        **labels,
    }


@dataclass(frozen=True, eq=False)
class SuggestRequest:
    """Reconstruct (or refine, ``reconstruct.resume``) and suggest; the folder goes to ``out``."""

    reconstruct: ReconstructRequest  # its ``out`` is not used: the result goes to ``out`` with the suggestions
    n: int = 5
    axis: int | None = None  # suggest along this voxel axis (default: the thick or annotation axis)
    score: str = DEFAULT_SCORE
    out: PathLike | None = None


@dataclass(eq=False)
class SuggestOutput:
    structures: StructureSet
    found: NextSlices
    content: dict  # suggestions.json
    paths: dict[str, Path] = field(default_factory=dict)


def suggest_job_steps(
    request: SuggestRequest, cancel: CancelFlag | None = None
) -> Generator[Progress, None, SuggestOutput]:
    """Run the job; yields Progress; returns the structures, the suggestions and the files written."""
    out = None
    if request.out is not None:
        out = check_output_folder(request.out, inputs=input_files(request.reconstruct), names=(SUGGESTIONS, STRUCTURES))
    fitted = yield from reconstruct_job_steps(replace(request.reconstruct, out=None), cancel)
    structures = fitted.structures
    found = next_slices(structures, request.n, axis=request.axis, score=request.score)
    content = suggestions_content(structures, found, str(request.reconstruct.observation))
    paths: dict[str, Path] = {}
    if out is not None:
        with atomic_folder(out) as staging:
            written = save_structures(structures, staging)
            atomic_write_bytes(staging / SUGGESTIONS, json.dumps(content, indent=2).encode())
        paths = {name: out / Path(path).name for name, path in written.items()}
        paths["suggestions"] = out / SUGGESTIONS
    return SuggestOutput(structures, found, content, paths)


def run_suggest(
    request: SuggestRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> SuggestOutput:
    """Run :func:`suggest_job_steps` to the end."""
    return drive(suggest_job_steps(request, cancel), on_progress)
