"""The one experiment runner of the accuracy benchmarks: a scratch copy, params put back, a run,
its metrics.

``bench.accuracy``, ``bench.selection`` and ``bench.photos`` run many configurations one after
the other in one scratch copy of the project. ``dvc exp run -S`` leaves the run's values in the
workspace's params.yaml, so each run starts from the committed params.yaml (``exp_run`` restores
it first); without that, a configuration would inherit the previous one's settings
(``tests/bench/test_experiments.py`` shows it would).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stages.common import paths
from tools.scratch import command_env, scratch_repo

ROOT = Path(__file__).resolve().parents[1]
# Which data a run uses. digits: scikit-learn's 1,797 embedded digits, all of them; mnist:
# params.yaml's default (200 MNIST digits per class).
DATA: dict[str, list[str]] = {
    "digits": ["data.source=digits", "data.max_per_class=null"],
    "mnist": ["data.source=mnist"],
}
IMAGENET = "extract.weights=imagenet"  # what a user runs (the tests' tiny params use random)


@contextmanager
def scratch(prefix: str, keep: Path | None = None) -> Iterator[Path]:
    """A committed scratch copy of the project (in ``keep``, kept, or a temp folder, removed)."""
    work = keep or Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield scratch_repo(work / "repo", root=ROOT, name="bench")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def restore_params(repo: Path) -> None:
    """params.yaml as committed in ``repo``, whatever the last ``dvc exp run -S`` left there."""
    subprocess.run(["git", "checkout", "--", paths.PARAMS_FILE.name], cwd=repo, check=True)


def exp_run(repo: Path, sets: Sequence[str], target: str | None = "evaluate") -> dict[str, Any]:
    """``dvc exp run [target] -S s ...`` from the committed params; the command, its wall seconds
    and output. A failure ends the benchmark with the command's output."""
    restore_params(repo)
    cmd = ["dvc", "exp", "run", *([target] if target else [])]
    cmd += [arg for s in sets for arg in ("-S", s)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=repo, env=command_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {
        "command": " ".join(cmd),
        "seconds": round(seconds, 1),
        "output": result.stdout + result.stderr,
    }


def metrics(repo: Path, path: Path = paths.METRICS) -> dict[str, Any]:
    """One metrics file of the last run in ``repo``."""
    return json.loads((repo / path).read_text(encoding="utf-8"))


def record_text(value: Any, indent: int = 0, width: int = 160) -> str:
    """JSON with every object or list of up to ``width`` characters on one line (one run a line),
    the rest indented: records that read and diff line by line."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [
            f"{pad}{json.dumps(k)}: {record_text(v, indent + 2, width)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + record_text(v, indent + 2, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def write_record(path: Path, record: Any) -> None:
    """A benchmark's JSON record (``record_text``), ending with a newline."""
    path.write_text(record_text(record) + "\n", encoding="utf-8")
