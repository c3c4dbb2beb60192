"""Which settings change the trained head's bytes, and what bfloat16 saves: ``bench/precision.json``.

    python -m bench.precision [--repo PATH] [--epochs N] [--settings default threads_1 ...]

Needs a repository whose ``data/features`` and ``data/split`` are built (``dvc repro extract``;
default: this one). Trains the head (``python -m stages.train``) in a scratch folder once per
setting, each in a fresh process: ``train.precision: float32`` under every setting,
``mixed_bfloat16`` under the default one; records the wall and CPU time and the sha256 of
``models/head.keras`` and of every file in ``data/predictions``, and whether they equal the
default setting's in the same precision. ``--epochs`` shortens training (0: params.yaml's).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, run, write_record
from stages.common import paths
from tools.scratch import write_params

# What may differ between machines or runs: thread counts, the CPUs a process may use, oneDNN
# on or off, and the instruction sets oneDNN may use (a cap simulates an older CPU on this one:
# AVX2 for a CPU without AVX-512, AVX512_CORE for one without bfloat16 or AMX units).
THREADS_1 = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {"env": {}},
    "threads_1": {"env": THREADS_1},
    "threads_4": {"env": {"TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "2"}},
    "taskset_cpu0": {"env": {}, "prefix": ["taskset", "-c", "0"]},
    "onednn_off": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "isa_avx2": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}},
    "isa_avx512_core": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}},
    "isa_avx2_threads_1": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2", **THREADS_1}},
}


def workspace(repo: Path, work: Path) -> None:
    """``work``: the project's code and params, the repo's built features and split (linked)."""
    for name in ("stages", "tools", paths.PARAMS_FILE):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    for folder in (paths.FEATURES_DIR, paths.SPLIT_DIR):
        if not (repo / folder).is_dir():
            sys.exit(f"ERROR: {repo / folder} is missing: run `dvc repro extract` in {repo} first.")
        (work / folder).parent.mkdir(parents=True, exist_ok=True)
        (work / folder).symlink_to((repo / folder).resolve())


def train_once(work: Path, precision: str, name: str) -> dict[str, Any]:
    """One fresh ``python -m stages.train`` under setting ``name``; its times and output hashes
    (the previous run's outputs deleted first, so that a run that writes nothing cannot pass)."""
    write_params(work, {"train.precision": precision})
    shutil.rmtree(work / paths.PROBS_DIR, ignore_errors=True)
    (work / paths.HEAD).unlink(missing_ok=True)
    setting = SETTINGS[name]
    cmd = [*setting.get("prefix", []), sys.executable, "-m", "stages.train"]
    done = run(cmd, work, setting["env"])
    files = [work / paths.HEAD, *sorted((work / paths.PROBS_DIR).glob("*.npy"))]
    hashes = {str(f.relative_to(work)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    print(f"{precision} {name}: {done.seconds:.1f} s, {done.cpu_seconds:.1f} CPU s", flush=True)
    times = {"seconds": round(done.seconds, 2), "cpu_seconds": round(done.cpu_seconds, 2)}
    return {"precision": precision, "setting": name, **setting, **times, "hashes": hashes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="a repository with built features")
    parser.add_argument("--epochs", type=int, default=0, help="train.epochs (0: params.yaml's)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "precision.json")
    args = parser.parse_args(argv)
    names = ["default", *[n for n in args.settings if n != "default"]]
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        workspace(args.repo.resolve(), Path(tmp))
        if args.epochs:
            write_params(tmp, {"train.epochs": args.epochs})
        runs = [train_once(Path(tmp), "float32", name) for name in names]
        runs.append(train_once(Path(tmp), "mixed_bfloat16", "default"))
    default = {r["precision"]: r for r in runs if r["setting"] == "default"}
    for r in runs:
        r["identical_to_default"] = r["hashes"] == default[r["precision"]]["hashes"]
    record = {
        "epochs": args.epochs or "params.yaml",
        "train_seconds": {p: r["seconds"] for p, r in default.items()},
        "train_cpu_seconds": {p: r["cpu_seconds"] for p, r in default.items()},
        "float32_identical_under_every_setting": all(
            r["identical_to_default"] for r in runs if r["precision"] == "float32"
        ),
        "runs": runs,
    }
    write_record(args.out, record, "precision", argv)


if __name__ == "__main__":
    main()
