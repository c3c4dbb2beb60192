"""Which settings change the trained head's bytes, and what bfloat16 saves: ``bench/precision.json``.

    python -m bench.precision [--repo PATH] [--epochs N] [--settings default threads_1 ...]

Needs a repository whose ``data/features`` and ``data/split`` are built (``dvc repro extract``;
default: this one). Trains the head (``python -m stages.train``, the stage a head-only
``dvc exp run evaluate`` re-runs) in a scratch folder, once per setting in ``SETTINGS``, each in
a fresh process: ``train.precision: float32`` under every setting, ``mixed_bfloat16`` under the
default one. For each run it records the wall time and the sha256 of ``models/head.keras`` and
of every file in ``data/predictions``; ``identical_to_default`` says whether a setting gave the
default setting's bytes in the same precision. ``--epochs`` shortens training (0: params.yaml's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stages.common import paths
from tools.scratch import command_env, write_params

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "precision.json"

# What may differ between machines or runs: thread counts, the CPUs a process may use, oneDNN
# on or off, and the instruction sets oneDNN may use (a cap simulates an older CPU on this one:
# AVX2 for a CPU without AVX-512, AVX512_CORE for one without bfloat16 or AMX units).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {"env": {}},
    "threads_1": {
        "env": {
            "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
    },
    "threads_4": {"env": {"TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "2"}},
    "taskset_cpu0": {"env": {}, "prefix": ["taskset", "-c", "0"]},
    "onednn_off": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "isa_avx2": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}},
    "isa_avx512_core": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}},
    "isa_avx2_threads_1": {
        "env": {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    },
}
INPUTS = (paths.FEATURES_DIR, paths.SPLIT_DIR)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_hashes(work: Path) -> dict[str, str]:
    """sha256 of the head and of each prediction file: the bytes that must not depend on setup."""
    files = [work / paths.HEAD, *sorted((work / paths.PROBS_DIR).glob("*.npy"))]
    return {str(f.relative_to(work)): sha256(f) for f in files}


def scratch_workspace(repo: Path, work: Path) -> None:
    """``work``: the project's code and params, the repo's built features and split (linked)."""
    for name in ("stages", "tools", paths.PARAMS_FILE):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
    for folder in INPUTS:
        if not (repo / folder).is_dir():
            sys.exit(f"ERROR: {repo / folder} is missing: run `dvc repro extract` in {repo} first.")
        (work / folder).parent.mkdir(parents=True, exist_ok=True)
        (work / folder).symlink_to((repo / folder).resolve())


def children_cpu_seconds() -> float:
    """CPU time (user + system) of the finished child processes: less moved by other load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def remove_outputs(work: Path) -> None:
    """Delete the previous run's outputs, so that a run that writes nothing cannot pass."""
    shutil.rmtree(work / paths.PROBS_DIR, ignore_errors=True)
    for output in (paths.HEAD, paths.TRAIN_LOG):
        (work / output).unlink(missing_ok=True)


def train_once(work: Path, precision: str, setting: dict[str, Any]) -> dict[str, Any]:
    """One fresh ``python -m stages.train`` under ``setting``; its time and output hashes."""
    write_params(work, {"train.precision": precision})
    remove_outputs(work)
    env = command_env(setting["env"])
    command = [*setting.get("prefix", []), sys.executable, "-m", "stages.train"]
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    seconds, cpu_seconds = time.perf_counter() - start, children_cpu_seconds() - cpu_start
    if result.returncode != 0:
        sys.exit(f"ERROR: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "hashes": output_hashes(work),
    }


def measure(repo: Path, epochs: int, names: list[str]) -> list[dict[str, Any]]:
    runs = [("float32", name) for name in names] + [("mixed_bfloat16", "default")]
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        work = Path(tmp)
        scratch_workspace(repo, work)
        if epochs:
            write_params(work, {"train.epochs": epochs})
        for precision, name in runs:
            record = {"precision": precision, "setting": name, **SETTINGS[name]}
            record.update(train_once(work, precision, SETTINGS[name]))
            print(
                f"{precision:15s} {name:18s} {record['seconds']:6.1f} s, "
                f"{record['cpu_seconds']:6.1f} CPU s",
                flush=True,
            )
            records.append(record)
    reference = {r["precision"]: r["hashes"] for r in records if r["setting"] == "default"}
    for record in records:
        record["identical_to_default"] = record["hashes"] == reference.get(record["precision"])
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="a repository with built features")
    parser.add_argument("--epochs", type=int, default=0, help="train.epochs (0: params.yaml's)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    names = ["default", *[n for n in args.settings if n != "default"]]
    records = measure(args.repo.resolve(), args.epochs, names)
    from bench.run import machine

    default = [r for r in records if r["setting"] == "default"]
    report = {
        "command": "python -m bench.precision " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "epochs": args.epochs or "params.yaml",
        "train_seconds": {r["precision"]: r["seconds"] for r in default},
        "train_cpu_seconds": {r["precision"]: r["cpu_seconds"] for r in default},
        "float32_identical_under_every_setting": all(
            r["identical_to_default"] for r in records if r["precision"] == "float32"
        ),
        "runs": records,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
