"""Errors a user can act on, and the entry point that prints them without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's params, data or weights; the message says what to do."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn a PipelineError or Ctrl-C into one clear line and exit code."""
    from stages.common.params import ParamsError

    try:
        main()
    except (PipelineError, ParamsError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("Interrupted: no output of this stage was written.", file=sys.stderr)
        sys.exit(130)
