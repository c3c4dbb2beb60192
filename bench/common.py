"""What every benchmark shares: a timed child process with its peak memory, the machine, the
JSON record, and the one experiment runner (a scratch copy, params put back, a run, its metrics).

``exp_run`` restores the committed params.yaml before every run: ``dvc exp run -S`` leaves the
run's values in the workspace, so without it a configuration would inherit the previous one's
settings (``tests/bench/test_common.py`` shows it would).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from stages.common import paths
from tools.scratch import command_env, scratch_repo

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "  # a child's last line of this kind is its result (``child``)
# Which data a run uses. digits: scikit-learn's 1,797 embedded digits, all of them; mnist:
# params.yaml's default (200 MNIST digits per class).
DATA: dict[str, list[str]] = {
    "digits": ["data.source=digits", "data.max_per_class=null"],
    "mnist": ["data.source=mnist"],
}
IMAGENET = "extract.weights=imagenet"  # what a user runs (the tests' tiny params use random)


@dataclass
class Done:
    """A finished command: wall and CPU seconds, output and peak resident memory (of the command
    and every process it waited for: ``wait4``'s own usage, not earlier commands')."""

    command: str
    seconds: float
    cpu_seconds: float
    output: str
    peak_rss_mb: float


def run(cmd: Sequence[str], cwd: Path = ROOT, env: Mapping[str, str] | None = None) -> Done:
    """Run ``cmd`` (stdout and stderr together); a failure ends the benchmark with its output."""
    extra = {"PYTHONPATH": str(ROOT), **(env or {})}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            list(cmd), cwd=cwd, env=command_env(extra), stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"ERROR: `{' '.join(cmd)}` exited {code} in {cwd}:\n{output[-4000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Done(" ".join(cmd), seconds, cpu, output, usage.ru_maxrss / 1024)


def child(module: str, *args: str, cwd: Path = ROOT) -> tuple[dict[str, Any], Done]:
    """``python -m bench.<module> args`` in a fresh process; the JSON it printed after
    ``RESULT_PREFIX`` (see ``print_result``) and how the process ran."""
    done = run([sys.executable, "-m", f"bench.{module}", *args], cwd)
    lines = [line for line in done.output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        sys.exit(
            f"ERROR: bench.{module} {' '.join(args)} printed no result:\n{done.output[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX)), done


def print_result(result: Any) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def epoch_timer(keras: Any) -> Any:
    """A Keras callback whose ``seconds`` lists each epoch's wall time (validation included)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    return EpochTimer()


def installed(*names: str) -> str | None:
    """The version of the first of these distributions that is installed."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return None


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, its AVX-512/AMX/bfloat16 flags, cores, memory, GPUs,
    library versions and the load when the benchmark started."""
    from stages.train import cpu_flags

    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), None)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu or platform.processor() or "unknown",
        "cpu_flags": sorted(
            f for f in cpu_flags() if f.startswith(("avx512f", "amx", "avx512_bf16"))
        ),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory / 2**30, 1),
        "gpus": len(glob.glob("/dev/nvidia[0-9]*")),
        "python": platform.python_version(),
        "tensorflow": installed("tensorflow", "tensorflow-cpu"),
        **{name: installed(name) for name in ("keras", "numpy", "dvc", "pillow", "ray")},
        "load_average_start": round(os.getloadavg()[0], 2),
    }


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
    else:
        items = [pad + record_text(v, indent + 2, width) for v in value]
    ends = "{}" if isinstance(value, dict) else "[]"
    return ends[0] + "\n" + ",\n".join(items) + "\n" + " " * indent + ends[1]


def write_record(
    path: Path, record: dict[str, Any], module: str, argv: Sequence[str] | None
) -> None:
    """``record`` with the command that made it (``argv``, or this process's arguments when
    None: a module's ``main(argv)`` passes its own) and the machine, as ``path``."""
    command = " ".join(["python -m", f"bench.{module}", *(sys.argv[1:] if argv is None else argv)])
    full = {"command": command, **record, "machine": machine()}
    path.write_text(record_text(full) + "\n", encoding="utf-8")
    print(f"wrote {path}")


@contextmanager
def scratch(prefix: str, **kwargs: Any) -> Iterator[Path]:
    """A committed scratch copy of the project in a temporary folder (``tools/scratch.py``;
    ``kwargs`` go to ``scratch_repo``), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-", ignore_cleanup_errors=True) as work:
        yield scratch_repo(Path(work) / "repo", root=ROOT, name="bench", **kwargs)


def exp_run(repo: Path, sets: Sequence[str], target: str | None = "evaluate") -> Done:
    """``dvc exp run [target] -S s ...`` from the committed params.yaml."""
    subprocess.run(["git", "checkout", "--", paths.PARAMS_FILE.name], cwd=repo, check=True)
    cmd = ["dvc", "exp", "run", *([target] if target else [])]
    return run(cmd + [arg for s in sets for arg in ("-S", s)], repo)


def metrics(repo: Path, path: Path = paths.METRICS) -> dict[str, Any]:
    """One metrics file of the last run in ``repo``."""
    return json.loads((repo / path).read_text(encoding="utf-8"))
