"""Errors a user can act on, and the entry point that prints them without a traceback."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from stages.common import paths


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


def stage_name(main: Callable[[], None]) -> str:
    """``train`` for ``stages.train.main``, also when it runs as ``python -m stages.train``."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rpartition(".")[2]


def record_time(stage: str, seconds: float, path: Path = paths.STAGE_TIMES) -> None:
    """Append ``{"stage", "seconds"}`` to ``path``, inside a DVC repository only (``.dvc/``)."""
    if not path.parent.parent.is_dir():
        return
    path.parent.mkdir(exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": stage, "seconds": round(seconds, 3)}) + "\n")


# The packages whose modules run as commands: the stages and the app on the shipped model.
COMMAND_PACKAGES = ("stages.", "app.")


def is_stage_process() -> bool:
    """True when this process was started as ``python -m stages.<name>`` or ``app.<name>``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.startswith(COMMAND_PACKAGES)


def exit_finished_stage(status: int = 0) -> None:
    """End a stage process whose main() has finished, without the interpreter's teardown.

    Every output is written, closed and renamed into place by then; what is left is Python
    taking thousands of modules apart and TensorFlow stopping its thread pools: 1.3 s after
    ``import keras`` here, 0.4 s after scikit-learn, on every stage run. ``os._exit(status)``
    after flushing stdout and stderr skips it. Only in a stage process (a test or notebook that
    calls ``run_stage`` keeps running).
    """
    if not is_stage_process():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def end_command(status: int) -> NoReturn:
    """End a command of ``app/`` (predict, serve) whose main() returned ``status``, with no
    teardown in a stage process (``exit_finished_stage``; for serve it would also run while
    daemon request threads may still be inside TensorFlow), else with ``sys.exit``."""
    exit_finished_stage(status)
    sys.exit(status)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn a PipelineError or Ctrl-C into one clear line and exit code.

    A main() that finishes has its wall time recorded (``record_time``), what bench/ reports,
    and the process ends at once (``exit_finished_stage``).
    """
    from stages.common.params import ParamsError

    interrupts = _Interrupts()
    signal.signal(signal.SIGINT, interrupts)
    start = time.perf_counter()
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
    record_time(stage_name(main), time.perf_counter() - start)
    exit_finished_stage()
