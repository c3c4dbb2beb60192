"""bench/: the registry, the record every module writes, and run.py's matmul limit."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from bench import __main__ as registry
from bench import run
from bench.common import write_record
from stages.common.tf import setup_keras

ROOT = Path(__file__).resolve().parents[2]


def test_bench_matmul_limit_runs_one_matmul_per_stream():
    """bench's matmul limit for a process that runs one single-threaded stream per core: as many
    matmuls side by side as streams (one alone would use one core and understate the limit),
    each the true product, and the rate counts them all."""
    setup_keras()
    import tensorflow as tf

    functions = run.sgemm_functions(tf, streams=3)
    products, expected = functions["sgemm_tf"](), functions["sgemm_numpy"]()
    assert len(products) == 3
    for product in products:
        np.testing.assert_allclose(product, expected, rtol=1e-3, atol=1e-3)
    assert run.gflops(2.0, 3) == pytest.approx(3 * run.gflops(2.0))


def test_a_record_names_its_command_and_machine(tmp_path):
    """Every record says how it was made and where (what docs/performance.md prints)."""
    write_record(tmp_path / "r.json", {"x": 1}, "growing", ["--images", "20"])
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["command"] == "python -m bench.growing --images 20" and record["x"] == 1
    assert {"cores", "memory_gib", "gpus", "tensorflow", "keras", "python"} <= set(
        record["machine"]
    )


@pytest.mark.parametrize("name", registry.SECTIONS)
def test_every_registered_module_runs_with_an_argument_list(name: str):
    """``python -m bench`` calls ``main([])``: each module's main takes its argument list."""
    main = importlib.import_module(f"bench.{name}").main
    assert list(inspect.signature(main).parameters) == ["argv"]


def test_every_module_is_used_by_a_docs_page_or_a_test():
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")]
    texts += [p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py")]
    shared = {"__init__", "__main__", "common"}
    for module in sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in shared):
        used = (f"bench.{module}", f"bench/{module}.py", f"bench import {module}")
        assert any(u in text for u in used for text in texts), f"bench/{module}.py: no page or test"


def test_extract_plans_time_whole_batches() -> None:
    """extract pads every batch to extract.batch_size: a partial batch would time padding."""
    batch = run.params("extract")["batch_size"]
    assert all(images % batch == 0 for images, _ in run.EXTRACT_PLANS.values()), run.EXTRACT_PLANS
