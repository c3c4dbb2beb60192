"""The speed benchmark: ``python -m bench.run`` writes bench/results.json (docs/performance.md).

Each section measures in fresh processes (``python -m bench.run --probe NAME JSON`` prints one
``BENCH_RESULT`` line: a clean TensorFlow runtime and honest import costs) and returns its raw
figures, nested under its name in results.json, and its rows of the table (``table``):

* ``import``: ``import tensorflow`` alone, the floor every TensorFlow stage pays;
* ``extract``: the extract stage's path at 32, 64 and 224 px (one stream per core, and one
  stream) vs a plain ``model.predict``, as a fraction of the matmul limit measured the same way;
* ``repro``: a full ``dvc repro`` (ImageNet weights) in a scratch copy, a no-op one, one after a
  ``train.*`` change, the head-only iteration ``dvc exp run evaluate -S train.seed=S`` (median
  of three) and ``dvc exp run`` with export; whether split and evaluate import TensorFlow;
* ``head_floor``: the head's epoch inside ``fit_head`` against its matmul floor, as set and in
  float32.

Peak memory against the folder's size is ``bench.growing``'s (split, augment and extract).

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

from bench.common import ROOT, Done, child, epoch_timer, print_result, record_text, run
from bench.common import machine as describe_machine
from stages.common import paths
from tools.scratch import git_commit, scratch_repo, stages_run, write_params

OUT = ROOT / "bench" / "results.json"
FULL_PARAMS = {"extract.weights": "imagenet"}  # the default a user runs; random is for tests
ITERATION_SEEDS = (44, 46, 47)  # one `dvc exp run evaluate -S train.seed=S` each
EXTRACT_PLANS = {32: (256, 5), 64: (512, 5), 224: (32, 5)}  # px: images, repetitions
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


def probe_import() -> dict[str, float]:
    start = time.perf_counter()
    import tensorflow  # noqa: F401

    return {"import_s": time.perf_counter() - start}


def probe_extract(size: int, images: int, reps: int, one_stream: bool = False) -> dict[str, Any]:
    """The stage's path (``tf.data`` -> forward -> memory-mapped .npy; one single-threaded stream
    per core, or with ``one_stream`` one over TensorFlow's pools) vs plain ``model.predict`` of
    the same cut ResNet50, with the matmul limit (the faster of TensorFlow's, run as the stage
    runs, and numpy's) measured in between."""
    from stages import extract
    from stages.common.io import npy_writer
    from stages.common.resnet50 import to_model_input
    from stages.common.tf import setup_keras
    from stages.common.weights import load_resnet50

    keras = setup_keras(42)
    import tensorflow as tf

    p = {**params("extract"), "weights": "imagenet"}
    streams = 1 if one_stream else extract.cpu_streams(tf)
    strategy = extract.make_strategy(tf)
    with strategy.scope():
        model, _ = extract.build_extractor(keras, p, size)
    forward = extract.make_forward(tf, model, strategy, streams)
    base, _ = load_resnet50("imagenet", size, p["seed"])  # the seed's extractor: no BN folding
    pooled = extract.global_pooling(keras, p["pooling"])(base.get_layer(p["layer"]).output)
    plain = keras.Model(base.input, pooled)
    x = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)

    def stage_path() -> None:
        dataset = extract.image_dataset(tf, [x], p["batch_size"], strategy)
        with npy_writer(Path(tmp) / "f.npy", (images, model.output_shape[-1]), np.float32) as f:
            extract.write_features(forward, dataset, f)

    with tempfile.TemporaryDirectory() as tmp:
        fns = sgemm_functions(tf, streams)
        fns["stage"] = stage_path
        fns["predict"] = lambda: plain.predict(to_model_input(x), verbose=0)
        best = best_of(fns, reps)
    return {
        "streams": streams,
        "layer": p["layer"],
        "flops_per_image": conv_dense_flops(keras, model),
        "sgemm_gflops": max(gflops(best["sgemm_tf"], streams), gflops(best["sgemm_numpy"])),
        "images_per_s": images / best["stage"],
        "predict_images_per_s": images / best["predict"],
    }


def probe_head_floor(repo: str, epochs: int) -> dict[str, Any]:
    """Epoch seconds of the head in one ``fit_head`` (stages/train.py: its input pipeline, CSV
    log, validation; no early stopping; the first, tracing epoch dropped; median of the rest),
    as set and in float32, against its matmul floor (forward and two backward matmuls per Dense
    layer on the training vectors, one forward on val) at this process's matmul rate."""
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
    floor = (3 * per_vector * len(x) + per_vector * len(xv)) / rate
    result: dict[str, Any] = {"sgemm_gflops": rate / 1e9, "floor_s": floor, "epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in {"default": {}, "float32": {"precision": "float32"}}.items():
            config = {**train, **overrides, "epochs": epochs, "patience": 0}
            model = train_stage.build_head(keras, x, n_classes, config)
            timer = epoch_timer(keras)
            log = Path(tmp) / "log.csv"
            train_stage.fit_head(keras, model, (x, y), (xv, yv), config, log, extra=[timer])
            result[f"{name}_epoch_s"] = statistics.median(timer.seconds[1:])
    return result


PROBES = {"import": probe_import, "extract": probe_extract, "head_floor": probe_head_floor}


# --- Sections: each returns its raw figures and its rows of the table -------------------------


def bench_import(repo: Path | None) -> tuple[dict, list[Row]]:
    times = [probe("import")["import_s"] for _ in range(3)]
    row = [
        "`import tensorflow` (s, best of 3 fresh processes)",
        fmt(min(times)),
        "floor of every TF stage",
    ]
    return {"seconds": min(times), "runs": times}, [row]


def extract_rows(size: int, streams: dict, one: dict, limit: float) -> list[Row]:
    """The stage's speed at one size, and the same against ``limit`` (GFLOP/s) as a fraction."""
    flops = streams["flops_per_image"]
    share = {k: fmt(v * flops / (limit * 1e9)) for k, v in one.items() if k.endswith("per_s")}
    speedup = fmt(streams["images_per_s"] / one["predict_images_per_s"])
    speed = f"{streams['streams']} streams; as one stream: {fmt(one['images_per_s'])}; "
    speed += f"plain `model.predict`: {fmt(one['predict_images_per_s'])}; x{speedup}"
    fraction = f"{fmt(flops / 1e9)} GFLOP/image up to {streams['layer']}; one stream: "
    fraction += f"{share['images_per_s']}; predict: {share['predict_images_per_s']}"
    fraction += "; target ≥ 0.75" if size == 64 else ""
    return [
        [f"extract, {size} px (images/s)", fmt(streams["images_per_s"]), speed],
        [
            f"extract_fraction_of_limit, {size} px",
            fmt(streams["images_per_s"] * flops / (limit * 1e9)),
            fraction,
        ],
    ]


def bench_extract(repo: Path | None) -> tuple[dict, list[Row]]:
    """Each size in a process with one stream per core and in one with one stream; one limit for
    all three figures of a size: the best matmul rate either process measured."""
    sizes, speed_rows, fraction_rows = {}, [], []
    for size, (images, reps) in EXTRACT_PLANS.items():
        plan = {"size": size, "images": images, "reps": reps}
        streams, one = probe("extract", **plan), probe("extract", **plan, one_stream=True)
        limit = max(streams["sgemm_gflops"], one["sgemm_gflops"])
        sizes[size] = {"streams": streams, "one_stream": one, "sgemm_gflops": limit}
        speed, fraction = extract_rows(size, streams, one, limit)
        speed_rows.append(speed)
        fraction_rows.append(fraction)
    limit = max(r["sgemm_gflops"] for r in sizes.values())
    limit_row = ["float32 matmul 2048² (GFLOP/s, best)", fmt(limit), "the limit"]
    return {"sgemm_gflops": limit, "sizes": sizes}, [*speed_rows, limit_row, *fraction_rows]


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


def breakdown(done: Done, stage_seconds: dict[str, float]) -> str:
    """'train 9.8, evaluate 1.9, rest 3.1': each stage's main() and what is left of the wall."""
    rest = done.seconds - sum(stage_seconds.values())
    return ", ".join([*(f"{s} {t:.1f}" for s, t in stage_seconds.items()), f"rest {rest:.1f}"])


def imports_tensorflow(repo: Path, stage: str) -> bool:
    """Whether one stage, run in a fresh process, imported TensorFlow or Keras."""
    code = f"import runpy, sys; runpy.run_module('stages.{stage}', run_name='__main__'); "
    code += "print('TF_LOADED', 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    return "TF_LOADED False False" not in run([sys.executable, "-c", code], repo).output


def bench_repro(repo: Path) -> tuple[dict, list[Row]]:
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
    exp_all, exp_all_stages = repro(repo, "exp", "run", "-S", "train.seed=45")
    split, evaluate = (imports_tensorflow(repo, stage) for stage in ("split", "evaluate"))
    test_accuracy = json.loads((repo / paths.METRICS).read_text())["test"]["accuracy"]
    result = {
        "full": {"seconds": full.seconds, "stage_seconds": full_stages},
        "noop_seconds": noop.seconds,
        "head_only": {"seconds": head_only.seconds, "stages": stages_run(head_only.output)},
        "exp_run_evaluate": {str(s): r[0].seconds for s, r in runs.items()},
        "exp_run_with_export": {"seconds": exp_all.seconds, "stage_seconds": exp_all_stages},
        "test_accuracy_imagenet": test_accuracy,
        "imports_tensorflow": {"split": split, "evaluate": evaluate},
    }
    each = ", ".join(f"{k} {v:.0f}" for k, v in full_stages.items())
    median = f"median of {len(runs)} (" + ", ".join(fmt(r[0].seconds) for r in runs.values())
    return result, [
        ["full `dvc repro`, default params, ImageNet (s)", fmt(full.seconds), "target < 300"],
        ["  of which each stage's main() (s)", each, "rest: Python and library imports, DVC"],
        ["`dvc repro` with nothing to do (s)", fmt(noop.seconds), ""],
        [
            "`dvc repro` after a `train.*` change (s)",
            fmt(head_only.seconds),
            f"runs {' + '.join(result['head_only']['stages'])}; {epochs} epochs",
        ],
        [
            "`dvc exp run evaluate -S train.seed=S` (s)",
            fmt(exp.seconds),
            f"the head-only iteration: {' + '.join(stages_run(exp.output))}; {median}); target ≤ 15",
        ],
        ["  of which (s)", breakdown(exp, exp_stages), "rest: DVC, Python start-up, imports"],
        [
            "`dvc exp run -S train.seed=45` (s)",
            fmt(exp_all.seconds),
            f"the same with the shipped model: {' + '.join(stages_run(exp_all.output))}",
        ],
        ["  of which (s)", breakdown(exp_all, exp_all_stages), ""],
        ["split imports TensorFlow", fmt(split), "must be False"],
        ["evaluate imports TensorFlow", fmt(evaluate), "must be False"],
    ]


def bench_head_floor(repo: Path) -> tuple[dict, list[Row]]:
    r = probe("head_floor", repo=str(repo), epochs=8)
    over = {k: r[f"{k}_epoch_s"] / r["floor_s"] for k in ("default", "float32")}
    notes = f"median of {r['epochs'] - 1} epochs in one fit; matmul floor {fmt(r['floor_s'])} s"
    return {**r, "over_floor": over}, [
        [
            "head: one epoch inside `fit_head` (s)",
            fmt(r["default_epoch_s"]),
            f"{notes} at {fmt(r['sgemm_gflops'])} GFLOP/s",
        ],
        ["head epoch / matmul floor", fmt(over["default"]), "target ≤ 2"],
        [
            "  hidden layers in float32 (epoch / floor)",
            fmt(over["float32"]),
            "`train.precision: float32`",
        ],
    ]


SECTIONS = {
    "import": bench_import,
    "extract": bench_extract,
    "repro": bench_repro,
    "head_floor": bench_head_floor,
}
NEEDS_REPO = {"repro", "head_floor"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    parser.add_argument("--repo", type=Path, help="reuse a scratch repo where `dvc repro` ran")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--probe", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return print_result(PROBES[args.probe[0]](**json.loads(args.probe[1])))
    names, start = args.only or list(SECTIONS), time.perf_counter()
    record: dict[str, Any] = {"machine": describe_machine()}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        repo = args.repo
        if repo is None and NEEDS_REPO & set(names):
            keep = lambda rel: not rel.startswith("bench/")  # noqa: E731
            repo = scratch_repo(Path(tmp), FULL_PARAMS, root=ROOT, keep=keep, name="bench")
            if "repro" not in names:
                run(["dvc", "repro"], repo)
        for name in names:
            print(f"{name}:", flush=True)
            record[name], section_rows = SECTIONS[name](repo)
            rows += section_rows
    record |= {"bench_s": time.perf_counter() - start, "table": rows}
    args.out.write_text(record_text(record) + "\n", encoding="utf-8")
    print("\n".join(" | ".join(row) for row in rows))
    print(f"wrote {args.out}; `make docs` shows it in docs/performance.md")


if __name__ == "__main__":
    main()
