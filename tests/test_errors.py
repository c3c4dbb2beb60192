"""run_stage: one clear line and an exit code for user errors and for Ctrl-C, however it surfaces."""

from __future__ import annotations

import os
import signal

import pytest

from stages.common.errors import PipelineError, run_stage


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
