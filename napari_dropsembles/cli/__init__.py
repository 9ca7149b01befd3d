"""``napari-dropsembles``: the command line over the core jobs (nnU-Net's entry point -> API split).

- :mod:`.parser`: the options, their defaults and ranges read from the config fields, and how a core
  message names a setting (as its option);
- :mod:`.commands`: one function per subcommand, each one call into a job of core/jobs and its printout;
- :mod:`.printing`: progress on stderr, summaries on stdout;
- :mod:`.exit`: the process around a command: signals, closed descriptors, one line and an exit code
  per error.
"""

from .exit import Terminated, main

__all__ = ["Terminated", "main"]
