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

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import InputError

RESULT_FILE = re.compile(  # maps, segmentations and meshes in any output format (core/formats/outputs)
    r"^(mean|variance|entropy|mutual_information|segmentation|probability|mesh|mesh_member\d+)\.[a-z0-9.]+$"
    r"|^report\.json$|^members\.safetensors$|^suggestions\.json$"
    r"|^structures\.json$|^label\d+$",  # several structures (core/structures): the index, a folder per label
    re.IGNORECASE,
)
_TMP_TAG = ".dropsembles-tmp-"
_OLD_TAG = ".dropsembles-old-"


def is_result_file(name: str) -> bool:
    """True for the files a reconstruction writes (a stale one is dropped when a new result lands)."""
    return bool(RESULT_FILE.match(name))


def _as_path(value: object, option: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip():
        raise InputError(f"{option} needs a path, got {value!r}; name a file or folder (e.g. {option} results)")
    return Path(value)


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file: equal resolved paths, or the same inode."""
    try:
        if a.resolve() == b.resolve():
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


# --------------------------------------------------------------------------- temporaries


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _owner(name: str, tag: str) -> int | None:
    match = re.search(re.escape(tag) + r"(\d+)-", name)
    return int(match.group(1)) if match else None


def clean_stale(folder: Path, stem: str) -> list[Path]:
    """Remove temporaries ``.{stem}.dropsembles-tmp-{pid}-*`` / ``-old-`` left by dead processes."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(f".{stem}."):
            continue
        for tag in (_TMP_TAG, _OLD_TAG):
            pid = _owner(entry.name, tag)
            if pid is not None and pid != os.getpid() and not pid_alive(pid):
                _remove(entry)
                removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def temp_name(path: Path) -> str:
    """Prefix of a temporary beside ``path``, tagged with this process id (cleaned if it dies)."""
    return f".{path.name}{_TMP_TAG}{os.getpid()}-"


_LIBC: Callable | None = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False when not available."""
    global _LIBC
    try:
        if _LIBC is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _LIBC = libc.renameat2
        at_fdcwd, rename_exchange = -100, 2
        return _LIBC(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (OSError, AttributeError):
        return False


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the folder ``tmp`` at ``out``; carry non-result entries of the old ``out`` over; drop the rest."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        old = tmp  # now holds the previous result
    else:
        old = out.parent / f".{out.name}{_OLD_TAG}{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(out, old)
        os.rename(tmp, out)
    for entry in old.iterdir():
        if is_result_file(entry.name) or entry.name.startswith("."):
            continue
        target = out / entry.name
        if target.exists():  # the new result wrote a file of that name: keep the user's beside it
            target = out / f"{entry.name}.previous"
        with contextlib.suppress(OSError):
            os.rename(entry, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out`` as a whole.

    On any error or signal the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {parent}: {exc.strerror or exc}") from None
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write to {out}: it exists and is not a folder")
    clean_stale(parent, out.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_name(out), dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _swap_in(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
