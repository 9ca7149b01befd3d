"""Files and folders replaced in one step: a reader never sees a half-written file or result folder."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..config.errors import InputError

# Read once at import: files written through a temp file get the usual permissions, not mkstemp's 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed; raise InputError when it cannot be written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"cannot write to {path}: it exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {path}: permission denied")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the folder of ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the suffix of ``path`` (libraries pick formats by suffix). On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    suffix = _full_suffix(path)
    clean_stale(folder, path.name)  # temporaries of a killed earlier write
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_name(path), suffix=f".tmp{suffix}", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError) and error.errno is not None and not error.filename:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error  # name the file
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + os.replace (never half-written)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


RESULT_FILE = re.compile(  # maps, segmentations and meshes in any output format (core/formats/outputs)
    r"^(mean|variance|entropy|mutual_information|segmentation|probability|mesh|mesh_member\d+)\.[a-z0-9.]+$"
    r"|^report\.json$|^members\.safetensors$|^suggestions\.json$"
    r"|^structures\.json$|^label\d+$",  # several structures (core/structures): the index, a folder per label
    re.IGNORECASE,
)
TEMPORARY_TAG = _TMP_TAG = ".dropsembles-tmp-"  # in the names of temporaries (cleaned when their process died)
_OLD_TAG = ".dropsembles-old-"


def is_result_file(name: str) -> bool:
    """True for the files a reconstruction writes (a stale one is dropped when a new result lands)."""
    return bool(RESULT_FILE.match(name))


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


def _swap_in(tmp: Path, out: Path, keep_others: bool = True) -> None:
    """Put the folder ``tmp`` at ``out``; with ``keep_others`` carry non-result entries of the old ``out``
    over; drop the rest."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        old = tmp  # now holds the previous result
    else:
        old = out.parent / f".{out.name}{_OLD_TAG}{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(out, old)
        os.rename(tmp, out)
    for entry in old.iterdir() if keep_others else ():
        if is_result_file(entry.name) or entry.name.startswith("."):
            continue
        target = out / entry.name
        if target.exists():  # the new result wrote a file of that name: keep the user's beside it
            target = out / f"{entry.name}.previous"
        with contextlib.suppress(OSError):
            os.rename(entry, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, *, keep_others: bool = True) -> Iterator[Path]:
    """The one way a folder is replaced in one step: yield an empty temporary folder beside ``out``; on
    success it replaces ``out`` as a whole (a result folder, a cohort case, an OME-Zarr store).

    On any error or signal the temporary folder is removed and ``out`` is left as it was. ``keep_others``:
    files of the old ``out`` that are not results (the user's own) are carried over.
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
        _swap_in(tmp, out, keep_others)
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
