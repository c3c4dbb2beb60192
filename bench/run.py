"""The speed benchmark: ``python -m bench.run`` writes bench/results.json (docs/performance.md).

Each measurement runs in a fresh process (``python -m bench.run --probe NAME JSON`` prints one
``BENCH_RESULT`` line: a clean TensorFlow runtime and honest import costs); each section returns
its rows of the table that the record holds (``table``) and docs/performance.md shows:

* ``extract``: the extract stage's path (one single-threaded stream per core) at 32, 64 and
  224 px, in images/s and as a fraction of the matmul limit measured the same way; and
  ``import tensorflow`` alone, first in each of these processes: the floor of every TF stage;
* ``repro``: a full ``dvc repro`` (ImageNet weights) in a scratch copy, a no-op one, one after a
  ``train.*`` change and the head-only iteration ``dvc exp run evaluate -S train.seed=S``
  (median of three); whether split and evaluate import TensorFlow;
* ``head_floor``: the head's epoch inside ``fit_head`` against its matmul floor.

Stage times are what each stage records itself (``paths.STAGE_TIMES``), not parsed from logs.
Timings interleave what they compare and keep the best of a few repetitions, so that a machine
whose speed drifts still gives fair ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import ROOT, Done, child, epoch_timer, print_result, record_text, run, scratch
from bench.common import machine as describe_machine
from stages.common import paths
from tools.scratch import git_commit, stages_run, write_params

OUT = ROOT / "bench" / "results.json"
FULL_PARAMS = {"extract.weights": "imagenet"}  # the default a user runs; random is for tests
ITERATION_SEEDS = (44, 46, 47)  # one `dvc exp run evaluate -S train.seed=S` each
# px: images, repetitions. Whole batches of extract.batch_size (128): the stage pads every batch
# to that size, so a partial one would time padding as work.
EXTRACT_PLANS = {32: (256, 5), 64: (512, 5), 224: (128, 3)}
SGEMM_N = 2048
Row = list[str]  # figure, value, notes: one line of the table


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def params(section: str, root: Path = ROOT) -> dict[str, Any]:
    return yaml.safe_load((root / paths.PARAMS_FILE).read_text(encoding="utf-8"))[section]


def probe(name: str, **kwargs: Any) -> dict[str, Any]:
    result, done = child("run", "--probe", name, json.dumps(kwargs))
    print(f"  {name} {kwargs or ''}: {done.seconds:.0f}s", flush=True)
    return result


# --- Probes: each runs in its own process ----------------------------------------------------


def best_of(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Run every function once to warm up, then ``reps`` interleaved rounds; best seconds each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def sgemm_functions(tf: Any, streams: int = 1) -> dict[str, Callable[[], Any]]:
    """Float32 2048x2048 matmuls through TensorFlow and through numpy (OpenBLAS).

    With ``streams`` > 1 (one single-threaded stream per core, ``extract.cpu_streams``) the
    TensorFlow function runs ``streams`` matmuls side by side, as extract runs its sub-batches:
    one alone would run on one core and understate the limit (``gflops(seconds, streams)``).
    """
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32) for _ in range(2))
    pairs = [(tf.constant(a), tf.constant(b)) for _ in range(streams)]
    matmuls = tf.function(lambda: [tf.linalg.matmul(x, y) for x, y in pairs])
    return {"sgemm_tf": lambda: [c.numpy() for c in matmuls()], "sgemm_numpy": lambda: a @ b}


def gflops(seconds: float, matmuls: int = 1) -> float:
    """The rate of ``matmuls`` 2048x2048 float32 matmuls done in ``seconds``."""
    return matmuls * 2 * SGEMM_N**3 / seconds / 1e9


def conv_dense_flops(keras: Any, model: Any) -> int:
    """2 x multiply-adds of every Conv2D and Dense layer for one image (pooling, additions and
    activations, a few % of the total, left out)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            total += 2 * kh * kw * cin * cout * layer.output.shape[1] * layer.output.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def probe_extract(size: int, images: int, reps: int) -> dict[str, Any]:
    """``import tensorflow``; then the stage's path (``tf.data`` -> forward -> memory-mapped .npy)
    and, interleaved with it, the matmul limit: the faster of TensorFlow's, run as the stage
    runs, and numpy's."""
    start = time.perf_counter()
    import tensorflow as tf

    import_s = time.perf_counter() - start
    from stages import extract
    from stages.common.io import npy_writer
    from stages.common.tf import setup_keras

    keras = setup_keras(42)

    p = {**params("extract"), "weights": "imagenet"}
    streams, strategy = extract.cpu_streams(tf), extract.make_strategy(tf)
    with strategy.scope():
        model, _ = extract.build_extractor(keras, p, size)
    forward = extract.make_forward(tf, model, strategy, streams)
    x = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)

    def stage_path() -> None:
        dataset = extract.image_dataset(tf, [x], p["batch_size"], strategy)
        with npy_writer(Path(tmp) / "f.npy", (images, model.output_shape[-1]), np.float32) as f:
            extract.write_features(forward, dataset, f)

    with tempfile.TemporaryDirectory() as tmp:
        best = best_of({**sgemm_functions(tf, streams), "stage": stage_path}, reps)
    limit = max(gflops(best["sgemm_tf"], streams), gflops(best["sgemm_numpy"]))
    flops, rate = conv_dense_flops(keras, model), images / best["stage"]
    return {
        "import_s": import_s,
        "streams": streams,
        "layer": p["layer"],
        "flops_per_image": flops,
        "sgemm_gflops": limit,
        "images_per_s": rate,
        "fraction_of_limit": rate * flops / (limit * 1e9),
    }


def probe_head_floor(repo: str, epochs: int) -> dict[str, Any]:
    """Epoch seconds of the head in one ``fit_head`` (stages/train.py: its input pipeline, CSV
    log, validation; no early stopping; the first, tracing epoch dropped; median of the rest)
    against its matmul floor (forward and two backward matmuls per Dense layer on the training
    vectors, one forward on val) at this process's matmul rate."""
    from stages import train as train_stage
    from stages.common.tf import setup_keras

    train = params("train", Path(repo))
    keras = setup_keras(train["seed"])
    import tensorflow as tf

    load = lambda kind, split: np.load(Path(repo) / getattr(paths, kind)(split))  # noqa: E731
    x, y, xv, yv = (load(k, s) for s in ("train", "val") for k in ("features", "feature_labels"))
    n_classes = int(max(y.max(), yv.max())) + 1
    widths = [x.shape[1], *train["layers"], n_classes]
    per_vector = sum(2 * a * b for a, b in itertools.pairwise(widths))
    rate = gflops(best_of({"tf": sgemm_functions(tf)["sgemm_tf"]}, reps=5)["tf"]) * 1e9
    config = {**train, "epochs": epochs, "patience": 0}
    model, timer = train_stage.build_head(keras, x, n_classes, config), epoch_timer(keras)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.csv"
        train_stage.fit_head(keras, model, (x, y), (xv, yv), config, log, extra=[timer])
    return {
        "sgemm_gflops": rate / 1e9,
        "floor_s": (3 * per_vector * len(x) + per_vector * len(xv)) / rate,
        "epochs": epochs,
        "epoch_s": statistics.median(timer.seconds[1:]),
    }


PROBES = {"extract": probe_extract, "head_floor": probe_head_floor}


# --- Sections: each returns its rows of the table ---------------------------------------------


def bench_extract(repo: Path) -> list[Row]:
    sizes = {
        size: probe("extract", size=size, images=images, reps=reps)
        for size, (images, reps) in EXTRACT_PLANS.items()
    }
    imports = [r["import_s"] for r in sizes.values()]
    rows = [
        ["`import tensorflow` (s)", fmt(min(imports)), f"best of {len(imports)} fresh processes"]
    ]
    rows += [
        [f"extract, {size} px (images/s)", fmt(r["images_per_s"]), f"{r['streams']} streams"]
        for size, r in sizes.items()
    ]
    for size, r in sizes.items():
        notes = f"{fmt(r['flops_per_image'] / 1e9)} GFLOP/image up to {r['layer']}; "
        notes += f"float32 matmul 2048²: {fmt(r['sgemm_gflops'])} GFLOP/s"
        notes += "; target ≥ 0.75" if size == 64 else ""
        rows.append([f"extract_fraction_of_limit, {size} px", fmt(r["fraction_of_limit"]), notes])
    return rows


def repro(repo: Path, *args: str) -> tuple[Done, dict[str, float]]:
    """``dvc repro`` (or ``dvc args``) in ``repo``, and each stage's main() seconds from the
    records ``run_stage`` appended to ``paths.STAGE_TIMES`` during this run."""
    times = repo / paths.STAGE_TIMES
    before = times.stat().st_size if times.exists() else 0
    done = run(["dvc", *(args or ["repro"])], repo)
    with open(times, "rb") as f:
        f.seek(before)
        records = [json.loads(line) for line in f.read().decode("utf-8").splitlines()]
    return done, {r["stage"]: r["seconds"] for r in records}


def imports_tensorflow(repo: Path, stage: str) -> bool:
    """Whether one stage, run in a fresh process, imported TensorFlow or Keras."""
    code = f"import runpy, sys; runpy.run_module('stages.{stage}', run_name='__main__'); "
    code += "print('TF_LOADED', 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    return "TF_LOADED False False" not in run([sys.executable, "-c", code], repo).output


def bench_repro(repo: Path) -> list[Row]:
    full, full_stages = repro(repo)
    noop, _ = repro(repo)
    write_params(repo, {"train.seed": 43})  # a train.* change: train and evaluate run again
    head_only, _ = repro(repo)
    ran = re.search(r"\((\d+) of \d+ epochs", head_only.output)  # early stopping may end it
    epochs = ran.group(1) if ran else params("train", repo)["epochs"]
    git_commit(repo, "bench: after the head-only repro")
    # The loop users live in; the median of three (one run on a shared machine moves by 30 %).
    runs = {
        s: repro(repo, "exp", "run", "evaluate", "-S", f"train.seed={s}") for s in ITERATION_SEEDS
    }
    exp, exp_stages = sorted(runs.values(), key=lambda r: r[0].seconds)[len(runs) // 2]
    split, evaluate = (imports_tensorflow(repo, stage) for stage in ("split", "evaluate"))
    each = ", ".join(f"{k} {v:.0f}" for k, v in full_stages.items())
    median = ", ".join(fmt(r[0].seconds) for r in runs.values())
    rest = exp.seconds - sum(exp_stages.values())
    where = ", ".join([*(f"{s} {t:.1f}" for s, t in exp_stages.items()), f"rest {rest:.1f}"])
    return [
        ["full `dvc repro`, default params, ImageNet (s)", fmt(full.seconds), "target < 300"],
        ["  of which each stage's main() (s)", each, "rest: Python and library imports, DVC"],
        ["`dvc repro` with nothing to do (s)", fmt(noop.seconds), ""],
        [
            "`dvc repro` after a `train.*` change (s)",
            fmt(head_only.seconds),
            f"runs {' + '.join(stages_run(head_only.output))}; {epochs} epochs",
        ],
        [
            "`dvc exp run evaluate -S train.seed=S` (s)",
            fmt(exp.seconds),
            f"the head-only iteration: {' + '.join(stages_run(exp.output))}; "
            f"median of {len(runs)} ({median}); target ≤ 15",
        ],
        ["  of which (s)", where, "rest: DVC, Python start-up, imports"],
        ["split imports TensorFlow", fmt(split), "must be False"],
        ["evaluate imports TensorFlow", fmt(evaluate), "must be False"],
    ]


def bench_head_floor(repo: Path) -> list[Row]:
    r = probe("head_floor", repo=str(repo), epochs=8)
    notes = f"median of {r['epochs'] - 1} epochs in one fit; matmul floor {fmt(r['floor_s'])} s"
    return [
        [
            "head: one epoch inside `fit_head` (s)",
            fmt(r["epoch_s"]),
            f"{notes} at {fmt(r['sgemm_gflops'])} GFLOP/s",
        ],
        ["head epoch / matmul floor", fmt(r["epoch_s"] / r["floor_s"]), "target ≤ 2"],
    ]


SECTIONS = {"extract": bench_extract, "repro": bench_repro, "head_floor": bench_head_floor}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--probe", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return print_result(PROBES[args.probe[0]](**json.loads(args.probe[1])))
    names, start = args.only or list(SECTIONS), time.perf_counter()
    record: dict[str, Any] = {"machine": describe_machine(), "table": []}
    keep = lambda rel: not rel.startswith("bench/")  # noqa: E731
    with scratch("run", overrides=FULL_PARAMS, keep=keep) as repo:
        if "repro" not in names and "head_floor" in names:
            run(["dvc", "repro"], repo)  # head_floor reads the built features
        for name in names:
            print(f"{name}:", flush=True)
            record["table"] += SECTIONS[name](repo)
    record["bench_s"] = time.perf_counter() - start
    args.out.write_text(record_text(record) + "\n", encoding="utf-8")
    print("\n".join(" | ".join(row) for row in record["table"]))
    print(f"wrote {args.out}; `make docs` shows it in docs/performance.md")


if __name__ == "__main__":
    main()
