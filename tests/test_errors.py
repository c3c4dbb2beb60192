"""run_stage: one clear line and an exit code for user errors and for Ctrl-C, however it surfaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stages import train
from stages.common import paths
from stages.common.errors import PipelineError, run_stage, stage_name


@pytest.fixture(autouse=True)
def restore_sigint():
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_pipeline_error_is_one_line_and_exit_2(capsys):
    def main():
        raise PipelineError("data.folder 'x' does not exist: create it or fix params.yaml")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "ERROR: data.folder 'x' does not exist: create it or fix params.yaml\n"
    )


def test_ctrl_c_is_reported_as_an_interrupt(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_stage(interrupt_self)
    assert exit_.value.code == 130
    assert "Interrupted: no output of this stage was written." in capsys.readouterr().err


def test_ctrl_c_that_a_library_turned_into_another_error_is_still_an_interrupt(capsys):
    """What TensorFlow's tf.data did when SIGINT landed inside its structure check."""
    cleaned = []

    def main():
        try:
            try:
                interrupt_self()
            except KeyboardInterrupt as err:
                raise ValueError(
                    "The two structures don't have the same nested structure."
                ) from err
        finally:
            cleaned.append(True)  # an atomic output's cleanup

    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 130
    assert cleaned == [True]
    err = capsys.readouterr().err
    assert "Interrupted: no output of this stage was written." in err
    assert "Traceback" not in err


def test_other_errors_still_raise():
    def main():
        raise ValueError("a bug, not the user's")

    with pytest.raises(ValueError, match="a bug"):
        run_stage(main)


def test_a_finished_stage_records_its_time_inside_a_dvc_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_stage(lambda: None)
    assert not paths.STAGE_TIMES.exists() and not Path(".dvc").exists(), "no DVC repo: nothing"

    Path(".dvc").mkdir()
    run_stage(_finishes)
    with pytest.raises(SystemExit):
        run_stage(_fails)  # a stage that fails records nothing
    records = [json.loads(line) for line in paths.STAGE_TIMES.read_text().splitlines()]
    assert [r["stage"] for r in records] == ["test_errors"]
    assert 0 <= records[0]["seconds"] < 60


def _finishes() -> None:
    pass


def _fails() -> None:
    raise PipelineError("bad params")


def test_stage_name_is_the_module_name():
    assert stage_name(train.main) == "train"


# A process that runs run_stage: with __main__ named like a stage module (as `python -m
# stages.<name>` names it) or not; an atexit handler shows whether Python's teardown ran.
_FAST_EXIT = """
import atexit, sys
from importlib.machinery import ModuleSpec
from stages.common.errors import run_stage
if sys.argv[1] == "stage":
    sys.modules["__main__"].__spec__ = ModuleSpec("stages.fake", None)
atexit.register(lambda: print("teardown ran"))
def main():
    print("main done")
    sys.stderr.write("last stderr line\\n")
run_stage(main)
print("after run_stage")
"""


@pytest.mark.parametrize("kind", ["stage", "other"])
def test_a_finished_stage_process_exits_without_teardown(kind: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "-c", _FAST_EXIT, kind],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "main done" in done.stdout and "last stderr line" in done.stderr  # flushed first
    if kind == "stage":  # os._exit(0) right after main(): no teardown, nothing after it
        assert "teardown ran" not in done.stdout and "after run_stage" not in done.stdout
    else:  # a test or notebook calling run_stage keeps running
        assert "after run_stage" in done.stdout and "teardown ran" in done.stdout


def test_commands_the_tests_start_get_ctrl_c_at_its_default():
    """Whatever the suite was started from (tests/conftest.py ``pytest_configure``): a process
    the tests start, such as the try-it server that ``Server.stop()`` stops with Ctrl-C, does
    not inherit SIGINT ignored."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stdout + result.stderr
