"""Cohort manifests: a folder, a glob or a CSV of cases, expanded into one task per (scan, structure).

A case is one observation volume with an optional ground truth, an optional list of labels and
optional per-case options (the ``reconstruct`` options by their command-line names). Each task
carries a content hash of everything its outputs depend on, so that a rerun can skip it.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from ... import __version__
from ..config.configs import ReconstructionConfig
from ..config.errors import ConfigError, InputError
from ..io.volumes import all_volume_suffixes, is_volume_path, read_volume, volume_suffix
from ..volumes.masks import list_labels

GROUND_TRUTH_SUFFIXES = ("_gt", "_ground_truth", "_truth")  # <stem><suffix><ext> pairs with <stem><ext>
CSV_COLUMNS = ("case", "observation", "ground_truth", "labels")
# per-case options: CSV column (= the command-line option) -> (ReconstructionConfig field, type)
OPTIONS: dict[str, tuple[str, type]] = {
    "method": ("method", str),
    "members": ("members", int),
    "steps": ("finetune.steps", int),
    "ewc": ("finetune.ewc_lambda", float),
    "lr": ("finetune.lr", float),
    "resolution": ("resolution_mm", float),
    "level": ("threshold", float),
    "seed": ("seed", int),
    "empty_slices": ("empty_slices", str),
}


@dataclass(frozen=True)
class CaseSpec:
    """One scan of a cohort. ``labels``: None = the volume as one binary mask; "each" = every label."""

    case_id: str
    observation: Path
    ground_truth: Path | None = None
    labels: tuple[int, ...] | str | None = None
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class CohortTask:
    """One (scan, structure) reconstruction: what a worker needs, and the hash of its inputs."""

    task_id: str
    case_id: str
    observation: str
    ground_truth: str | None
    label: int | str | None  # None: a binary volume; "all": every label merged; an int: that label
    config: ReconstructionConfig
    priors: tuple[str, ...] = ()  # prior files; () = the bundled prior
    input_hash: str = ""
    gpu: bool = False  # claims the dask resource GPU=1
    torch_threads: int | None = None  # None: the worker's share of the cores (core/networks/threads)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _stem(path: Path) -> str:
    return path.name[: -len(volume_suffix(path))] if volume_suffix(path) else path.stem


def _is_volume(path: Path) -> bool:
    return is_volume_path(path)


def _is_ground_truth_name(path: Path) -> bool:
    stem = _stem(path)
    return stem == "ground_truth" or any(stem.endswith(s) for s in GROUND_TRUTH_SUFFIXES)


def _paired_ground_truth(path: Path) -> Path | None:
    """``scan.nii.gz`` pairs with ``scan_gt.nii.gz`` (or _ground_truth / _truth) beside it."""
    suffix = volume_suffix(path)
    for tail in GROUND_TRUTH_SUFFIXES:
        candidate = path.with_name(f"{_stem(path)}{tail}{suffix}")
        if candidate.is_file():
            return candidate
    if _stem(path) == "observation":
        for candidate in sorted(path.parent.glob("ground_truth.*")):
            if _is_volume(candidate):
                return candidate
    return None


def _cases_from_files(files: Sequence[Path]) -> list[CaseSpec]:
    cases = []
    for path in files:
        if _is_ground_truth_name(path):
            continue
        # the `simulate` layout: one folder per case holding observation.nii.gz (+ ground_truth.nii.gz)
        name = path.parent.name if _stem(path) == "observation" else _stem(path)
        cases.append(CaseSpec(_safe_id(name), path.resolve(), _resolve(_paired_ground_truth(path))))
    return _unique_ids(cases)


def _resolve(path: Path | None) -> Path | None:
    return path.resolve() if path is not None else None


def _unique_ids(cases: list[CaseSpec]) -> list[CaseSpec]:
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        count = seen.get(case.case_id, 0)
        seen[case.case_id] = count + 1
        out.append(case if count == 0 else replace(case, case_id=f"{case.case_id}-{count + 1}"))
    return out


def parse_labels(text: str | None) -> tuple[int, ...] | str | None:
    """'' -> None (binary mask); 'each' -> every label; 'all' -> all labels merged; '1;2 3,4' -> (1, 2, 3, 4)."""
    text = (text or "").strip()
    if not text:
        return None
    if text in ("each", "all"):
        return text
    try:
        labels = tuple(int(v) for v in re.split(r"[;,\s]+", text) if v)
    except ValueError:
        raise InputError(f"labels must be integers separated by ';', 'each' or 'all', got {text!r}") from None
    if not labels or min(labels) <= 0:
        raise InputError(f"labels must be positive integers, got {text!r}")
    return labels


def _read_csv(path: Path) -> list[CaseSpec]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the manifest {path}: {error}") from None
    if "observation" not in fields:
        raise InputError(f"the manifest {path} needs an 'observation' column; it has {fields}")
    unknown = [name for name in fields if name not in CSV_COLUMNS and name not in OPTIONS]
    if unknown:
        raise InputError(
            f"the manifest {path} has unknown column(s) {unknown}; allowed: {', '.join(CSV_COLUMNS + tuple(OPTIONS))}"
        )
    cases = []
    for number, raw in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path.name} line {number}"
        if not row.get("observation"):
            raise InputError(f"{where}: the observation is empty")
        observation = (path.parent / row["observation"]).resolve()
        if not observation.is_file():
            raise InputError(f"{where}: observation file not found: {observation}")
        truth = (path.parent / row["ground_truth"]).resolve() if row.get("ground_truth") else None
        if truth is not None and not truth.is_file():
            raise InputError(f"{where}: ground truth file not found: {truth}")
        options = []
        for name, (_, kind) in OPTIONS.items():
            if row.get(name):
                try:
                    options.append((name, kind(row[name])))
                except ValueError:
                    what = {int: "an integer", float: "a number"}.get(kind, "text")
                    raise InputError(f"{where}: {name} must be {what}, got {row[name]!r}") from None
        try:
            labels = parse_labels(row.get("labels"))
        except InputError as error:
            raise InputError(f"{where}: {error}") from None
        case_id = _safe_id(row.get("case") or _stem(observation))
        cases.append(CaseSpec(case_id, observation, truth, labels, tuple(options)))
    return _unique_ids(cases)


def read_manifest(inputs: str | Path) -> list[CaseSpec]:
    """The cases of a folder, a glob pattern or a CSV manifest, in a stable order."""
    text = str(inputs)
    path = Path(text)
    if path.is_file() and path.suffix.lower() == ".csv":
        cases = _read_csv(path)
    elif path.is_dir():
        files = [p for p in sorted(path.iterdir()) if _is_volume(p)]
        files += [p for sub in sorted(path.iterdir()) if sub.is_dir() for p in sorted(sub.glob("observation.*"))]
        cases = _cases_from_files([p for p in files if _is_volume(p)])
    elif any(ch in text for ch in "*?["):
        cases = _cases_from_files([Path(p) for p in sorted(glob.glob(text, recursive=True)) if _is_volume(Path(p))])
    elif path.is_file():
        cases = _cases_from_files([path])
    else:
        raise InputError(f"{text} is neither a folder, a glob pattern, a .csv manifest nor a volume file")
    if not cases:
        raise InputError(f"no observation volume ({', '.join(all_volume_suffixes())}) found in {text}")
    return cases


@lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (cached while its size and modification time are unchanged)."""
    stat = Path(path).stat()
    return _file_hash(str(path), stat.st_size, stat.st_mtime_ns)


def task_hash(task: CohortTask) -> str:
    """Hash of everything the outputs depend on: input bytes, label, config, priors, package version."""
    content = {
        "observation": file_hash(task.observation),
        "ground_truth": file_hash(task.ground_truth) if task.ground_truth else None,
        "label": task.label,
        "config": asdict(task.config),
        "priors": [file_hash(p) for p in task.priors] or "bundled",
        "package_version": __version__,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _case_config(base: ReconstructionConfig, options: Mapping[str, object], where: str) -> ReconstructionConfig:
    """``base`` with a case's options; a bad value names the case and the manifest column."""
    top = {OPTIONS[n][0]: v for n, v in options.items() if not OPTIONS[n][0].startswith("finetune.")}
    tune = {OPTIONS[n][0].split(".", 1)[1]: v for n, v in options.items() if OPTIONS[n][0].startswith("finetune.")}
    try:
        return replace(base, **top, finetune=replace(base.finetune, **tune))
    except ConfigError as error:
        column = {field: name for name, (field, _) in OPTIONS.items()}.get(error.field, error.field)
        raise InputError(f"case {where}: {error.worded(column)}") from None


def plan_tasks(
    cases: Sequence[CaseSpec],
    config: ReconstructionConfig = ReconstructionConfig(),
    *,
    priors: Sequence[str | Path] = (),
    labels: tuple[int, ...] | str | None = None,
    gpu: bool = False,
    torch_threads: int | None = None,
) -> list[CohortTask]:
    """One task per (case, structure); ``labels`` applies to cases whose manifest gives none."""
    tasks = []
    prior_paths = tuple(str(Path(p).resolve()) for p in priors)
    for case in cases:
        case_config = _case_config(config, dict(case.options), case.case_id)
        wanted = case.labels if case.labels is not None else labels
        if wanted == "each":
            found = list_labels(read_volume(case.observation))
            if not found:
                raise InputError(f"case {case.case_id}: {case.observation} holds no label (all voxels are 0)")
            wanted = tuple(found)
        structures: list[int | str | None] = [wanted] if wanted is None or wanted == "all" else list(wanted)
        for label in structures:
            task_id = case.case_id if label is None or label == "all" else f"{case.case_id}.label{label}"
            task = CohortTask(
                task_id=task_id,
                case_id=case.case_id,
                observation=str(case.observation),
                ground_truth=str(case.ground_truth) if case.ground_truth else None,
                label=label,
                config=case_config,
                priors=prior_paths,
                gpu=gpu,
                torch_threads=torch_threads,
            )
            tasks.append(replace(task, input_hash=task_hash(task)))
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise InputError("two cases have the same id; give each row a distinct 'case' in the manifest")
    return tasks


def shard(tasks: Sequence[CohortTask], num_parts: int, part_id: int) -> list[CohortTask]:
    """Part ``part_id`` of ``num_parts`` (round robin over the manifest order): no cluster needed."""
    if num_parts < 1:
        raise InputError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id must be in [0, {num_parts - 1}], got {part_id}")
    return [task for i, task in enumerate(tasks) if i % num_parts == part_id]
