"""The benchmark: ``python -m bench`` writes bench/results.json and bench/results.md.

What it measures, each in fresh processes (see bench/probes.py), on this machine:

* ``import tensorflow`` alone (the floor every TensorFlow stage pays);
* feature extraction speed at 32, 64 and 224 px: the extract stage's own path vs a plain
  ``model.predict``, next to a float32 matmul (the machine's practical limit);
* a full ``dvc repro`` with default params (ImageNet weights) in a scratch copy of the repo,
  then ``dvc repro`` after a ``train.*`` change (only train and evaluate run);
* one epoch of the head on the cached features vs one epoch of the seed's method (frozen
  ResNet50 inside the training loop, augmentation on the fly);
* float32 vs mixed precision: speed, feature differences, head accuracy;
* peak resident memory of the extract stage for 2,000 and 20,000 images.

``--only`` runs some sections (for development; a full run is what results.md reports).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.probes import RESULT_PREFIX
from stages.common import paths
from tools.scratch import copy_project, git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results.json"
RESULTS_MD = ROOT / "bench" / "results.md"
BIN = Path(sys.executable).parent
FULL_PARAMS = {"extract.weights": "imagenet"}  # the default a user runs; random is for tests
HEAD_ONLY_CHANGE = {"train.seed": 43}  # a train.* change: train and evaluate run again


@dataclass
class Done:
    """A finished command: its wall seconds, exit status, output and peak resident memory."""

    seconds: float
    returncode: int
    output: str
    peak_rss_mb: float


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: Sequence[str], cwd: Path = ROOT, check: bool = True) -> Done:
    """Run ``cmd``; its own peak RSS comes from wait4 (this child only, not earlier ones)."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            list(cmd), cwd=cwd, env=command_env(), stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    if check and process.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {process.returncode}:\n{output[-4000:]}")
    return Done(seconds, process.returncode, output, usage.ru_maxrss / 1024)


def probe(name: str, cwd: Path = ROOT, **kwargs: Any) -> dict[str, Any]:
    done = run([sys.executable, "-m", "bench.probes", name, json.dumps(kwargs)], cwd=cwd)
    lines = [line for line in done.output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"probe {name} printed no result:\n{done.output[-4000:]}")
    print(f"  {name} {kwargs}: {done.seconds:.0f}s", flush=True)
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


# --- Machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512f", "amx", "avx512_bf16")))
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    versions = run(
        [
            sys.executable,
            "-c",
            "import json, tensorflow as tf, keras, numpy, dvc.version as d; print(json.dumps("
            "{'tensorflow': tf.__version__, 'keras': keras.__version__, 'numpy': numpy.__version__,"
            " 'dvc': d.__version__, 'gpus': len(tf.config.list_physical_devices('GPU'))}))",
        ]
    ).output.strip()
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        **json.loads(versions.splitlines()[-1]),
        "load_average_start": round(os.getloadavg()[0], 2),
    }


# --- Scratch repository ----------------------------------------------------------------------


def set_params(repo: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    path = repo / paths.PARAMS_FILE
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params


def scratch_repo(dest: Path) -> Path:
    """A committed git copy of the working tree (no outputs, no DVC cache) with FULL_PARAMS."""
    copy_project(dest, ROOT, keep=lambda rel: not rel.startswith("bench/results"))
    set_params(dest, FULL_PARAMS)
    git_commit(dest, "bench", init=True, name="bench")
    return dest


def stage_seconds(output: str) -> dict[str, float]:
    """Each stage's own reported time ("<stage>: wrote ... in 12.3s"): its work, not its imports."""
    ran = set(stages_run(output))
    found = re.findall(r"^(\w+): .* in ([0-9.]+)s\b", output, flags=re.M)
    return {stage: float(s) for stage, s in found if stage in ran}


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


# --- Sections --------------------------------------------------------------------------------


def bench_import(results: dict, repo: Path | None) -> None:
    times = [probe("import")["import_s"] for _ in range(3)]
    results["import_s"] = min(times)
    results["import_s_runs"] = times


def bench_extract(results: dict, repo: Path | None) -> None:
    batch_size = yaml.safe_load((ROOT / paths.PARAMS_FILE).read_text())["extract"]["batch_size"]
    plans = {
        32: {"images": 256, "reps": 5, "batch_sizes": [], "precisions": []},
        64: {
            "images": 256,
            "reps": 5,
            "batch_sizes": [bs for bs in (64, 128, 256) if bs != batch_size],
            "precisions": ["mixed_float16", "mixed_bfloat16"],
        },
        224: {"images": 32, "reps": 5, "batch_sizes": [], "precisions": []},
    }
    for size, plan in plans.items():
        r = probe("extract_speed", size=size, batch_size=batch_size, **plan)
        results[f"extract_images_per_s_{size}"] = r["project_images_per_s"]
        results[f"predict_images_per_s_{size}"] = r["predict_images_per_s"]
        results[f"extract_speedup_vs_predict_{size}"] = (
            r["project_images_per_s"] / r["predict_images_per_s"]
        )
        results[f"extract_fraction_of_limit_{size}"] = r["fraction_of_limit"]
        results[f"predict_fraction_of_limit_{size}"] = r["predict_fraction_of_limit"]
        results[f"resnet50_gflops_per_image_{size}"] = r["flops_per_image"] / 1e9
        results[f"sgemm_gflops_{size}"] = r["sgemm_gflops"]
        if r["batch_sweep"]:
            sweep = {int(k): v for k, v in r["batch_sweep"].items()} | {
                batch_size: r["project_images_per_s"]
            }
            results[f"extract_images_per_s_{size}_by_batch"] = dict(sorted(sweep.items()))
        for precision, speed in r["precision_images_per_s"].items():
            results[f"extract_images_per_s_{size}_{precision}"] = speed
    results["extract_batch_size"] = batch_size
    results["extract_layer"] = r["layer"]
    results["sgemm_gflops"] = max(results[f"sgemm_gflops_{s}"] for s in plans)


def bench_repro(results: dict, repo: Path) -> None:
    full = run(["dvc", "repro"], repo)
    results["full_repro_s"] = full.seconds
    results["full_repro_stage_s"] = stage_seconds(full.output)
    results["full_repro_params"] = FULL_PARAMS
    noop = run(["dvc", "repro"], repo)
    results["noop_repro_s"] = noop.seconds
    set_params(repo, HEAD_ONLY_CHANGE)
    head_only = run(["dvc", "repro"], repo)
    results["headonly_repro_s"] = head_only.seconds
    results["headonly_repro_stages"] = stages_run(head_only.output)
    results["headonly_repro_stage_s"] = stage_seconds(head_only.output)
    ran = re.search(r"\((\d+) of \d+ epochs", head_only.output)
    if ran:  # early stopping may end training before train.epochs
        results["headonly_train_epochs_run"] = int(ran.group(1))
    results["headonly_change"] = HEAD_ONLY_CHANGE
    metrics = json.loads((repo / paths.METRICS).read_text())
    results["test_accuracy_imagenet"] = metrics["test"]["accuracy"]
    check = run(
        [
            sys.executable,
            "-c",
            "import runpy, sys; runpy.run_module('stages.split', run_name='__main__'); "
            "print('TF_LOADED', 'tensorflow' in sys.modules, 'keras' in sys.modules)",
        ],
        repo,
    )
    results["split_s"] = check.seconds
    results["split_imports_tensorflow"] = "TF_LOADED False False" not in check.output


def bench_epochs(results: dict, repo: Path) -> None:
    """Head epochs and the seed's in-loop epochs, interleaved in one process."""
    r = probe("epochs", repo=str(repo), rounds=3, inloop_batches=2)
    results["head_train_images"] = r["train_images"]
    results["head_epoch_s"] = r["head"]["epoch_s"]
    results["head_train_s"] = r["head"]["train_s"]
    results["head_epoch_s_variants"] = {
        "default": r["head"]["epoch_s"],
        "steps_per_execution_32": r["head_steps_per_execution_32"]["epoch_s"],
        "batch_1024": r["head_batch_1024"]["epoch_s"],
    }
    results["inloop_train_images"] = r["inloop_train_images"]
    results["inloop_timed_images"] = r["inloop_timed_images"]
    results["inloop_epochs_timed"] = r["rounds"]
    results["inloop_epoch_s"] = r["inloop"]["epoch_s"]
    results["inloop_train_s"] = r["inloop"]["train_s"]


def bench_precision(results: dict, repo: Path) -> None:
    """mixed precision vs float32 at 64 px: feature differences and head accuracy."""
    results["precision_64"] = probe("precision", repo=str(repo), precisions=["mixed_bfloat16"])


def write_synthetic_split(folder: Path, n: int, size: int) -> None:
    """data/split and data/augmented as the extract stage reads them, with n training images."""
    from stages.common.io import npy_writer, save_npy

    rng = np.random.default_rng(0)
    with npy_writer(folder / paths.split_images("train"), (n, size, size, 3), np.uint8) as out:
        for lo in range(0, n, 1000):
            out[lo : lo + 1000] = rng.integers(0, 256, out[lo : lo + 1000].shape, dtype=np.uint8)
    save_npy(folder / paths.split_labels("train"), np.arange(n, dtype=np.int32) % 10)
    for name in ("val", "test"):
        images = rng.integers(0, 256, (10, size, size, 3), np.uint8)
        save_npy(folder / paths.split_images(name), images)
        save_npy(folder / paths.split_labels(name), np.arange(10, dtype=np.int32))
    save_npy(folder / paths.AUGMENTED_IMAGES, np.zeros((0, size, size, 3), np.uint8))
    save_npy(folder / paths.AUGMENTED_LABELS, np.zeros(0, np.int32))


def bench_rss(results: dict, repo: Path | None) -> None:
    size = 32
    for n in (2_000, 20_000):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_synthetic_split(folder, n, size)
            shutil.copy(ROOT / paths.PARAMS_FILE, folder / paths.PARAMS_FILE)
            set_params(folder, {"extract.weights": "random"})
            done = run([sys.executable, "-m", "stages.extract"], folder)
        results[f"extract_peak_rss_mb_{n}"] = done.peak_rss_mb
        results[f"extract_stage_s_{n}"] = done.seconds
        print(f"  extract stage, {n} images at {size} px: {done.seconds:.0f}s", flush=True)
    results["extract_rss_growth_20000_vs_2000"] = (
        results["extract_peak_rss_mb_20000"] / results["extract_peak_rss_mb_2000"] - 1
    )


SECTIONS: dict[str, Callable[[dict, Any], None]] = {
    "import": bench_import,
    "extract": bench_extract,
    "repro": bench_repro,
    "epochs": bench_epochs,
    "precision": bench_precision,
    "rss": bench_rss,
}
NEEDS_REPO = {"repro", "epochs", "precision"}


def derive(results: dict) -> None:
    """The ratios, defined once here (see results.md for the words)."""
    if "head_train_s" in results and "inloop_train_s" in results:
        per_image_inloop = results["inloop_train_s"] / results["inloop_train_images"]
        per_image_head = results["head_train_s"] / results["head_train_images"]
        results["head_speedup"] = per_image_inloop / per_image_head
        results["head_speedup_per_epoch"] = results["inloop_epoch_s"] / results["head_epoch_s"]
    if "inloop_epoch_s" in results and "headonly_repro_s" in results:
        epochs = (
            results.get("headonly_train_epochs_run")
            or yaml.safe_load((ROOT / paths.PARAMS_FILE).read_text())["train"]["epochs"]
        )
        results["train_epochs"] = epochs
        results["inloop_retrain_s"] = results["inloop_epoch_s"] * epochs
        results["iteration_speedup"] = results["inloop_retrain_s"] / results["headonly_repro_s"]


# --- Report ----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(results: dict) -> str:
    m = results["machine"]
    rows: list[tuple[str, str, str]] = []

    def row(key: str, label: str, note: str = "", digits: int = 3) -> None:
        if key in results:
            rows.append((label, fmt(results[key], digits), note))

    row("import_s", "`import tensorflow` (s, best of 3 fresh processes)", "floor of every TF stage")
    for size in (32, 64, 224):
        row(
            f"extract_images_per_s_{size}",
            f"extract, {size} px (images/s)",
            f"plain `model.predict`: {fmt(results.get(f'predict_images_per_s_{size}'))}; "
            f"x{fmt(results.get(f'extract_speedup_vs_predict_{size}'))}",
        )
    row("sgemm_gflops", "float32 matmul 2048² (GFLOP/s, best)", "the limit")
    for size in (32, 64, 224):
        row(
            f"extract_fraction_of_limit_{size}",
            f"extract_fraction_of_limit, {size} px",
            f"{fmt(results.get(f'resnet50_gflops_per_image_{size}'))} GFLOP/image up to "
            f"{results.get('extract_layer')}; "
            f"predict: {fmt(results.get(f'predict_fraction_of_limit_{size}'))}"
            + ("; target ≥ 0.6" if size == 64 else ""),
        )
    if "extract_images_per_s_64_by_batch" in results:
        sweep = ", ".join(
            f"{bs}: {fmt(v)}" for bs, v in results["extract_images_per_s_64_by_batch"].items()
        )
        rows.append(("extract 64 px by batch size (images/s)", sweep, ""))
    precision = results.get("precision_64", {})
    for p in ("mixed_float16", "mixed_bfloat16"):
        speed = results.get(f"extract_images_per_s_64_{p}")
        if speed is None:
            continue
        note = f"x{fmt(speed / results['extract_images_per_s_64'])} vs float32"
        if p in precision:
            r = precision[p]
            note += (
                f"; features: max diff / max {fmt(r['max_abs_diff_over_max'])}, mean diff / mean "
                f"{fmt(r['mean_abs_diff_over_mean'])}; head test accuracy "
                f"{fmt(r['test_accuracy'])} (float32: {fmt(precision['float32']['test_accuracy'])})"
            )
        rows.append((f"extract.precision: {p}, 64 px (images/s)", fmt(speed), note))
    row("full_repro_s", "full `dvc repro`, default params, ImageNet (s)", "target < 300")
    if "full_repro_stage_s" in results:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in results["full_repro_stage_s"].items())
        rows.append(("  of which each stage's own work (s)", stages, "rest: imports, DVC"))
    row("noop_repro_s", "`dvc repro` with nothing to do (s)")
    row(
        "headonly_repro_s",
        "`dvc repro` after a `train.*` change (s)",
        f"runs {' + '.join(results.get('headonly_repro_stages', []))}; "
        f"{results.get('train_epochs')} epochs",
    )
    row("head_epoch_s", "head: one epoch on cached features (s)", "as stages/train.py fits it")
    if "head_epoch_s_variants" in results:
        v = results["head_epoch_s_variants"]
        rows.append(
            (
                "  same head, other fit settings (s)",
                f"steps_per_execution=32: {fmt(v['steps_per_execution_32'])}; "
                f"batch_size 1024: {fmt(v['batch_1024'])}",
                "not the default (stages/train.py)",
            )
        )
    row(
        "inloop_epoch_s",
        "seed's method: one epoch, ResNet50 in the loop (s)",
        f"training part timed on {results.get('inloop_timed_images')} of "
        f"{results.get('inloop_train_images')} images, scaled",
    )
    row("head_speedup", "head_speedup (per training image seen)", "target ≥ 200")
    row("head_speedup_per_epoch", "  per epoch as each method defines it")
    row("iteration_speedup", "iteration_speedup", "target ≥ 100")
    row("extract_peak_rss_mb_2000", "extract stage peak RSS, 2,000 images at 32 px (MB)")
    row("extract_peak_rss_mb_20000", "extract stage peak RSS, 20,000 images at 32 px (MB)")
    row("extract_rss_growth_20000_vs_2000", "  growth 2,000 -> 20,000 images", "target ≤ 0.10")
    row("split_imports_tensorflow", "split imports TensorFlow", "must be False")

    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['gpus']} GPU; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"Python {m['python']}; {m['date']}; load average {m['load_average_start']} at start, "
        f"{results.get('load_average_end')} at end; {results.get('bench_s', 0):.0f} s in all.",
        "",
        "| figure | value | notes |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    parser.add_argument("--repo", type=Path, help="reuse a scratch repo where `dvc repro` ran")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        repo = args.repo
        if repo is None and NEEDS_REPO & set(sections):
            repo = scratch_repo(Path(tmp))
            if "repro" not in sections:
                run(["dvc", "repro"], repo)
        for name in sections:
            print(f"{name}:", flush=True)
            SECTIONS[name](results, repo)
    derive(results)
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    results["bench_s"] = time.perf_counter() - start
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    RESULTS_MD.write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    print(f"wrote {RESULTS_JSON.relative_to(ROOT)} and {RESULTS_MD.relative_to(ROOT)}")
