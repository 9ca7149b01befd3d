"""The process around a command: closed descriptors, signals, and one line with an exit code per error.

Every user error (bad volume, bad parameter, bad checkpoint) prints one clear line and exits with code 2,
with nothing half-written; Ctrl-C 130, SIGTERM 143, a closed stdout pipe 141, a bug 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ..core.config.budget import memory_limit, output_voxel_limit
from ..core.config.errors import Cancelled, ConfigError, DropsemblesError, word_settings
from ..core.io.messages import describe_fault, one_line
from ..core.networks.threads import mark_cpu, use_threads
from .parser import build_parser, cli_word, cli_wording
from .printing import say

EXIT_USAGE = 2


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporaries are removed on the way out."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker (the training-sample pool): end as SIGTERM always did
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated()


def _prepare_process() -> object:
    """Closed standard descriptors (``2>&-``) get /dev/null, so that no file we open becomes fd 2 and
    takes stray library output; SIGTERM unwinds like Ctrl-C (temporaries removed, exit 143).
    Returns the SIGTERM handler it replaced (None when it did not replace one)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    global _MAIN_PID
    if threading.current_thread() is threading.main_thread():
        _MAIN_PID = os.getpid()
        with contextlib.suppress(ValueError, OSError):
            return signal.signal(signal.SIGTERM, _on_sigterm)
    return None


def _os_error_line(error: OSError) -> str:
    """One line for a failed read or write, saying what to do (the output option is --out)."""
    return word_settings(describe_fault(error), cli_word).replace("write elsewhere", "write elsewhere (--out)")


def _broken_stdout() -> None:
    """The reader of stdout went away (``| head``): send what is left to /dev/null, quietly."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    mark_cpu()  # the start of the window over which the thread policy measures the other processes' load
    previous = _prepare_process()
    try:
        return _main(argv)
    finally:  # main() called from Python (tests, demo, a notebook) leaves SIGTERM as it found it
        if previous is not None:
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    name = f"napari-dropsembles {args.command}"
    try:
        from .commands import COMMANDS  # torch loads with the commands: --help and option errors answer at once

        with (
            memory_limit(getattr(args, "memory_limit", None)),
            output_voxel_limit(getattr(args, "max_voxels", None)),
            use_threads("cli"),  # torch's threads: the cores other processes leave free (core/networks/threads)
        ):
            code = COMMANDS[args.command](args)
        if sys.stdout is not None:  # what is still buffered goes now, where a closed pipe is answered (not at
            sys.stdout.flush()  # interpreter exit: "Exception ignored ... BrokenPipeError", exit 120)
        return code
    except Cancelled:
        say("napari-dropsembles: cancelled")
        return 130
    except ConfigError as error:
        say(f"{name}: error: {cli_wording(error)}")
        return EXIT_USAGE
    except DropsemblesError as error:
        say(f"{name}: error: {error.in_words(cli_word)}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("napari-dropsembles: interrupted; the previous output is unchanged")
        return 130
    except Terminated:
        say("napari-dropsembles: terminated (SIGTERM); the previous output is unchanged")
        return 143
    except BrokenPipeError:
        _broken_stdout()
        say(f"{name}: the output pipe was closed; stopped writing to stdout (files were written)")
        return 141
    except MemoryError as error:
        say(f"{name}: error: {word_settings(describe_fault(error), cli_word)}")
        return EXIT_USAGE
    except OSError as error:
        say(f"{name}: error: {_os_error_line(error)}")
        return EXIT_USAGE
    except Exception as error:  # a bug: one line for unattended runs; the traceback on request
        if os.environ.get("DROPSEMBLES_DEBUG"):
            raise
        say(
            f"{name}: internal error ({type(error).__name__}: {one_line(error, 160)}); "
            "rerun with DROPSEMBLES_DEBUG=1 for the traceback and please report it"
        )
        return 1
