"""One-line messages: any error's text on one line (:func:`one_line`), and a failure that is not the user's
input (a full disk, a size limit, no memory, a bug) said with what to do (:func:`describe_fault`).

The command line, the widgets and the cohort runner all show these words (each adds its own prefix).
"""

from __future__ import annotations

import errno

from ..config.errors import DropsemblesError, setting

# --------------------------------------------------------------------------- reading


def one_line(error: BaseException | str, limit: int = 200, *, with_type: bool = False) -> str:
    """The one-line message helper: a message on one line (whitespace runs collapsed), cut to ``limit``
    characters. ``with_type``: a library's error is named by its type (the project's own read as they are)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if with_type and isinstance(error, BaseException) and not isinstance(error, DropsemblesError):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_fault(error: BaseException) -> str:
    """What went wrong and what to do, in one line."""
    if isinstance(error, MemoryError):
        return (
            f"out of memory; use a coarser output spacing ({setting('resolution_mm')}) or fewer members, or set a "
            f"lower memory limit ({setting('memory_limit', 'GB')}) so that such requests are refused before they start"
        )
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the disk is full (or over quota) while writing{where}; free some space or write elsewhere"
        if error.errno == errno.EFBIG:
            return (
                f"a file grew past the size limit while writing{where} (ulimit -f, or the file system's "
                "largest file); raise the limit or write elsewhere"
            )
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied while writing{where}; choose a folder you can write to"
        return f"cannot read or write{where}: {one_line(error.strerror or error)}"
    return f"{type(error).__name__}: {one_line(error)}"
