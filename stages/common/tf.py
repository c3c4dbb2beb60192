"""TensorFlow/Keras setup shared by the stages that need it: quiet, seeded, deterministic.

Quiet means: the stage's own lines, TensorFlow's real warnings and errors, and nothing else.
Importing this module sets, before TensorFlow is imported, ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's
C++ info and warning lines off once its logging is initialised) and the Keras backend. A few lines
come anyway, written straight to the stderr file descriptor before that setting applies or at
error level although they are harmless; in a stage process ``setup_keras`` drops exactly those
(``NOISE``) and passes every other line through unchanged:

* absl's "All log messages before absl::InitializeLog() is called are written to STDERR";
* the oneDNN notice ("oneDNN custom operations are on ..."): informational, and turning oneDNN
  off would change the numbers;
* the CPU feature guard ("This TensorFlow binary is optimized to use available CPU instructions");
* tf.data's "NodeDef mentions attribute use_unbounded_threadpool which is not in the op
  definition": an error-level line about an attribute Keras sets and this TensorFlow ignores.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator

from stages.common.errors import is_stage_process

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_LOG_PREFIX = r"[IWE]\d{4} [\d:.]+ +\d+ "  # absl's "I0000 00:00:1796163716.233773    5227 "
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    rf"|{_LOG_PREFIX}port\.cc:\d+\] oneDNN custom operations are on\b"
    rf"|{_LOG_PREFIX}cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized\b"
    rf"|{_LOG_PREFIX}node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool\b"
)

# The filter runs in its own small process, so that the last lines of a stage that dies (an
# abort, a kill) still come through: it reads until every writer is gone. It ignores Ctrl-C,
# which the whole process group gets, and leaves the exit status to the stage.
_FILTER = f"""
import os, re, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = re.compile({NOISE.pattern!r})
pending = b""
while chunk := os.read(0, 65536):
    *lines, pending = (pending + chunk).split(b"\\n")
    kept = [line + b"\\n" for line in lines if not noise.match(line.decode(errors="replace"))]
    if kept:
        os.write(1, b"".join(kept))
if pending and not noise.match(pending.decode(errors="replace")):
    os.write(1, pending)
"""
_filtering = False

# What ``import keras`` would also import, although only Keras' scikit-learn wrappers and image
# gallery plots use them (both import them inside try/except ImportError, and no stage uses
# either): about 1 s of each TensorFlow stage's start-up here (``python -X importtime``).
KERAS_UNUSED_IMPORTS = ("sklearn", "matplotlib")


def is_noise(line: str) -> bool:
    """True for a TensorFlow start-up line that ``setup_keras`` drops (see the module docstring)."""
    return NOISE.match(line) is not None


def filter_stderr() -> None:
    """From now on, pass this process's stderr (file descriptor 2) through the ``NOISE`` filter.

    Covers what C++ code writes there too, and what child processes inherit. Once per process.
    """
    global _filtering
    if _filtering:
        return
    sys.stderr.flush()
    stderr = os.dup(2)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _FILTER], stdin=subprocess.PIPE, stdout=stderr
    )
    os.close(stderr)
    os.dup2(process.stdin.fileno(), 2)
    process.stdin.close()  # fd 2 is now the only writer: the filter ends when this process does
    _filtering = True


@contextlib.contextmanager
def modules_hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Inside, ``import name`` raises ImportError for each of ``names`` not yet imported; after,
    they import as usual. (Python's own rule: a None entry in ``sys.modules`` stops an import.)
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


def setup_keras(seed: int | None = None, *, quiet: bool | None = None):
    """Import Keras quietly; with a seed, make every random op and kernel reproducible.

    ``quiet``: drop TensorFlow's start-up noise from stderr (``filter_stderr``); by default only
    in a stage process, not in a test or notebook that imports a stage. Returns the ``keras``
    module. Op determinism makes the same commit and params give byte-identical outputs on the
    same machine. Keras is imported without ``KERAS_UNUSED_IMPORTS``, which stay importable.
    """
    if quiet if quiet is not None else is_stage_process():
        filter_stderr()
    with modules_hidden(KERAS_UNUSED_IMPORTS):
        import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return keras
