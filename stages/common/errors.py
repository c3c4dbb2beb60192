"""Errors a user can act on, and the entry point that prints them without a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's params, data or weights; the message says what to do."""


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt as usual, and remembers that it came.

    Python raises the interrupt wherever the main thread is, and inside some C extensions
    (TensorFlow's tf.data structure checks, for one) it surfaces as a different error. The flag
    lets ``run_stage`` report an interrupt as an interrupt whatever it turned into; the cleanup
    of half-written outputs happens either way, as the exception unwinds.
    """

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn a PipelineError or Ctrl-C into one clear line and exit code."""
    from stages.common.params import ParamsError

    interrupts = _Interrupts()
    signal.signal(signal.SIGINT, interrupts)
    try:
        main()
    except (PipelineError, ParamsError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        if not interrupts.seen:
            raise
        print("Interrupted: no output of this stage was written.", file=sys.stderr)
        sys.exit(130)
