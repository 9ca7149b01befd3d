"""Output paths that never overwrite an input, and result folders replaced as a whole.

- :func:`check_output_path` / :func:`check_output_folder`: called before any work starts; refuse an
  empty name, a folder where a file is needed (and back), and any output that is the same file as
  an input (resolved path or inode, so symlinks and hard links count).
- :func:`atomic_folder`: the whole result is written into a hidden temporary folder beside
  ``--out`` and swapped in at the end; until then the previous result stays intact. Files in
  ``--out`` that are not results (anything the tool does not write) are carried over.
  Temporaries of an interrupted run are removed on the way out (SIGINT/SIGTERM raise through
  here) or, after a SIGKILL, by the next run into the same folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..config.errors import InputError
from .atomic import is_result_file


def _as_path(value: object, option: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip():
        raise InputError(f"{option} needs a path, got {value!r}; name a file or folder (e.g. {option} results)")
    path = Path(value)
    try:
        resolved(path)
    except InputError:
        raise InputError(
            f"{option} {path} is a symbolic link loop (it leads back to itself); choose another output path"
        ) from None
    return path


def resolved(path: Path) -> Path:
    """``path`` with its links followed; a symbolic link loop is an InputError naming it (one line)."""
    try:
        return path.resolve()
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise InputError(
            f"{path} is a symbolic link loop (it leads back to itself); point it at a real file or folder"
        ) from None


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file: equal resolved paths, or the same inode."""
    try:
        if resolved(a) == resolved(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_input(output: Path, inputs: dict[str, Path | None], option: str) -> None:
    for role, source in inputs.items():
        if source is not None and same_file(output, Path(source)):
            raise InputError(
                f"{option} would overwrite the {role} {source} (it is the output {output.name}); "
                "choose another output path"
            )


def check_output_path(
    value: object, *, option: str = "--out", inputs: dict[str, Path | None] | None = None, suffix: str | None = None
) -> Path:
    """A file to be written: not empty, not a folder, with ``suffix``, not any of ``inputs``, parent writable."""
    path = _as_path(value, option)
    if suffix is not None and not path.name.endswith(suffix):
        raise InputError(f"{option} must end in {suffix}, got {path}")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name (e.g. {path / ('out' + (suffix or ''))})")
    _check_not_input(path, inputs or {}, option)
    parent = path.parent if str(path.parent) else Path(".")
    _check_writable_parent(parent, option)
    return path


def check_output_folder(
    value: object,
    *,
    option: str = "--out",
    inputs: dict[str, Path | None] | None = None,
    names: Iterable[str] = (),
) -> Path:
    """A result folder: not empty, not a file, and none of ``names`` in it (nor a result file) is an input."""
    folder = _as_path(value, option)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} exists and is not a folder; choose a folder name")
    inputs = inputs or {}
    for role, source in inputs.items():
        if source is None:
            continue
        source = Path(source)
        inside = same_file(source.parent, folder)
        if inside and (is_result_file(source.name) or source.name in set(names)):
            raise InputError(
                f"{option} {folder} would overwrite the {role} {source} (an output has that name); "
                "choose another output folder"
            )
        if same_file(source, folder):
            raise InputError(f"{option} {folder} is the {role} itself; choose another output folder")
    existing = [entry.name for entry in folder.iterdir() if is_result_file(entry.name)] if folder.is_dir() else []
    for name in [*names, *existing]:  # hard links and symlinks to an input count as the input
        _check_not_input(folder / name, inputs, option)
    _check_writable_parent(folder.parent if str(folder.parent) else Path("."), option)
    return folder


def _check_writable_parent(parent: Path, option: str) -> None:
    """The nearest existing ancestor must be a writable folder (the rest is created later)."""
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{option}: cannot write under {probe}: it is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot write in {probe}: permission denied")
