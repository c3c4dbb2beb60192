"""params.yaml validation: every bad value is named with its key, its value and what is allowed.

Most tests call ``validate`` / ``load_params`` on real files; the last ones run a real stage
(``python -m stages.split``) on a bad params.yaml and check what a user sees.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, copy_project, run, write_params
from dvc.utils.serialize import parse_yaml

from stages.common import paths
from stages.common.params import (
    MAX_SEED,
    RESNET50_LAYERS,
    SCHEMA,
    ParamsError,
    load_params,
    read_params,
    validate,
)


@pytest.fixture
def params() -> dict[str, Any]:
    """The repository's own params.yaml, parsed (a fresh copy per test)."""
    return copy.deepcopy(read_params(REPO_ROOT / paths.PARAMS_FILE))


def problems_of(params: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as info:
        validate(params)
    return str(info.value)


def set_key(params: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    section, key = dotted.split(".")
    params[section][key] = value
    return params


def test_repository_params_are_valid(params):
    assert validate(params) is params
    assert set(load_params("data", "train", path=REPO_ROOT / paths.PARAMS_FILE)) == {
        "data",
        "train",
    }


def test_every_schema_key_is_in_params_yaml(params):
    """params.yaml and SCHEMA list the same keys (a new key needs both)."""
    assert {s: set(v) for s, v in params.items()} == {s: set(v) for s, v in SCHEMA.items()}


BAD_VALUES = [
    # (key, value, what the message must say is allowed, extra hint expected in the message)
    ("train.dropout", 1.0, "a number in [0, 1)", ""),
    ("train.dropout", -0.1, "a number in [0, 1)", ""),
    ("train.dropout", True, "a number in [0, 1)", "booleans"),
    ("train.dropout", "0.5", "a number in [0, 1)", "remove the quotes"),
    ("train.dropout", None, "a number in [0, 1)", "null"),
    ("train.dropout", math.nan, "a number in [0, 1)", ""),
    ("train.epochs", 0, "an integer in [1, 100000]", ""),
    ("train.epochs", -3, "an integer in [1, 100000]", ""),
    ("train.epochs", 3.0, "an integer in [1, 100000]", "write 3"),
    ("train.epochs", False, "an integer in [1, 100000]", "booleans"),
    ("train.epochs", "10", "an integer in [1, 100000]", "remove the quotes"),
    ("train.learning_rate", 0, "a number in (0, 1)", ""),
    ("train.learning_rate", math.inf, "a number in (0, 1)", ""),
    ("train.learning_rate", 10**400, "a number in (0, 1)", ""),
    ("train.layers", [512, True], "a list of 0 to 8 integers in [1, 8192]", ""),
    ("train.layers", 512, "a list of 0 to 8 integers in [1, 8192]", ""),
    ("train.layers", [0], "a list of 0 to 8 integers in [1, 8192]", ""),
    ("train.layers", [8] * 9, "a list of 0 to 8 integers in [1, 8192]", ""),
    ("train.activation", "Relu", "one of ['relu'", "Did you mean 'relu'?"),
    ("train.seed", -1, f"an integer in [0, {MAX_SEED}]", ""),
    ("split.seed", 2**40, f"an integer in [0, {MAX_SEED}]", ""),
    ("data.image_size", 31, "an integer in [32, 1024]", ""),
    ("data.image_size", 16, "an integer in [32, 1024]", ""),
    ("data.image_size", 2048, "an integer in [32, 1024]", ""),
    ("data.image_size", "64", "an integer in [32, 1024]", "remove the quotes"),
    ("data.max_per_class", 0, "null or an integer >= 1", ""),
    ("data.max_per_class", True, "null or an integer >= 1", "booleans"),
    ("data.source", "foldr", "one of ['digits', 'mnist', 'folder']", "Did you mean 'folder'?"),
    ("data.folder", "", "a non-empty string", ""),
    ("data.folder", None, "a non-empty string", "null"),
    ("split.val", 0, "a number in (0, 1)", ""),
    ("split.test", 1, "a number in (0, 1)", ""),
    ("split.val", True, "a number in (0, 1)", "booleans"),
    ("augment.copies", -1, "an integer in [0, 100]", ""),
    ("augment.zoom", 0.95, "a number in [0, 0.9]", ""),
    ("extract.layer", "conv5_block4_out", "one of ['pool1_pool'", "Did you mean"),
    ("extract.layer", "fc1000", "conv5_block3_out", ""),
    ("extract.layer", 3, "one of ['pool1_pool'", ""),
    ("extract.pooling", "mean", "one of ['avg', 'max']", ""),
    ("extract.weights", "imagenet21k", "'imagenet', 'random', or the path", ""),
    ("extract.batch_size", 0, "an integer in [1, 4096]", ""),
    ("evaluate.grid_size", 401, "an integer in [1, 400]", ""),
]


@pytest.mark.parametrize(("key", "value", "allowed", "hint"), BAD_VALUES)
def test_bad_value_names_key_value_and_allowed(params, key, value, allowed, hint):
    message = problems_of(set_key(params, key, value))
    line = next(line for line in message.splitlines() if f"'{key}'" in line)
    assert f"The '{key}' parameter must be" in line
    assert f"Got {value!r} instead" in line
    assert allowed in line
    assert hint in line
    assert message.count("\n  - ") == 1, "exactly one problem is reported"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.max_per_class", None),
        ("train.layers", []),
        ("train.dropout", 0.0),
        ("train.dropout", 0),
        ("augment.copies", 0),
        ("data.image_size", 32),
        ("extract.weights", "weights/my_resnet.weights.h5"),
        ("train.seed", MAX_SEED),
        ("extract.layer", "pool1_pool"),
    ],
)
def test_edge_values_that_are_allowed(params, key, value):
    validate(set_key(params, key, value))


def test_every_resnet50_block_output_is_a_valid_layer(params):
    for layer in RESNET50_LAYERS:
        validate(set_key(params, "extract.layer", layer))
    assert len(RESNET50_LAYERS) == 17 and RESNET50_LAYERS[-1] == "conv5_block3_out"


def test_typo_key_suggests_the_right_one_and_shows_the_value(params):
    params["train"]["dropuot"] = 0.25
    message = problems_of(params)
    assert "unknown key 'train.dropuot' (value 0.25). Did you mean 'dropout'?" in message
    assert "Allowed keys in 'train': ['seed', 'layers'," in message


def test_unknown_and_missing_section(params):
    params["trian"] = params.pop("train")
    message = problems_of(params)
    assert "unknown key 'trian'" in message and "Did you mean 'train'?" in message
    assert "missing section 'train'." in message


def test_missing_key_says_what_it_must_be(params):
    del params["train"]["dropout"]
    assert "missing key 'train.dropout' (it must be a number in [0, 1))." in problems_of(params)


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.3, 0.7), (0.6, 0.6), (0.1, 0.9)])
def test_split_fractions_must_leave_training_images(params, val, test):
    params["split"].update(val=val, test=test)
    message = problems_of(params)
    assert "'split.val' + 'split.test' must be below 1" in message
    assert f"Got {val!r} + {test!r}" in message


def test_split_fractions_below_one_are_fine(params):
    params["split"].update(val=0.45, test=0.5)
    validate(params)


def test_sum_rule_is_not_repeated_when_a_fraction_is_already_invalid(params):
    params["split"].update(val=True, test=0.9)
    message = problems_of(params)
    assert "split.val" in message and "must be below 1" not in message


def test_all_problems_are_reported_at_once(params):
    set_key(params, "train.dropout", 1.5)
    set_key(params, "train.epochs", 0)
    params["augment"]["copeis"] = 2
    message = problems_of(params)
    assert message.startswith("Invalid params.yaml:")
    assert message.count("\n  - ") == 3


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("", "must be a mapping of sections"),
        ("- data\n- train\n", "must be a mapping of sections"),
        ("just text", "must be a mapping of sections"),
    ],
)
def test_whole_file_of_the_wrong_shape(tmp_path, document, expected):
    path = tmp_path / paths.PARAMS_FILE
    path.write_text(document, encoding="utf-8")
    with pytest.raises(ParamsError, match=expected):
        load_params("train", path=path)


def test_section_that_is_not_a_mapping(params):
    params["train"] = None
    assert "'train' must be a mapping of keys (key: value lines), got None." in problems_of(params)


def write_text_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / paths.PARAMS_FILE
    path.write_text(text, encoding="utf-8")
    return path


def repository_params_text() -> str:
    return (REPO_ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8")


def test_invalid_yaml_is_reported_with_its_position(tmp_path):
    text = repository_params_text()
    path = write_text_params(tmp_path, text + "train: [unclosed\n")
    line = text.count("\n") + 1  # the appended line
    with pytest.raises(ParamsError, match=rf"(?s)is not valid YAML: .*params.yaml, line {line}\b"):
        load_params("train", path=path)


def test_duplicate_key_is_refused_not_silently_overwritten(tmp_path):
    text = repository_params_text().replace("  dropout:", "  dropout: 0.9\n  dropout:")
    assert text.count("dropout:") == 2
    path = write_text_params(tmp_path, text)
    with pytest.raises(ParamsError, match=r"key 'dropout' appears twice .*line \d+"):
        load_params("train", path=path)


def test_exponent_without_a_dot_is_a_number_not_a_string(tmp_path):
    """PyYAML alone reads 1e-3 as the string '1e-3'; params.yaml reads it as YAML 1.2 does."""
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}
    text = re.sub(r"(?m)^  learning_rate: .*$", "  learning_rate: 2e-3", repository_params_text())
    assert "learning_rate: 2e-3" in text
    path = write_text_params(tmp_path, text)
    assert load_params("train", path=path)["train"]["learning_rate"] == 0.002


# Spellings that YAML 1.1 (PyYAML) and YAML 1.2 (DVC's ruamel.yaml) read differently.
AMBIGUOUS = ["0100", "017", "-017", "08", "0o17", "1:00", "1:30:00", "off", "no", "yes", "on", "On"]


def with_value(key: str, spelling: str) -> str:
    name = key.split(".")[1]
    text = re.sub(rf"(?m)^  {name}: .*$", f"  {name}: {spelling}", repository_params_text())
    assert f"  {name}: {spelling}\n" in text
    return text


@pytest.mark.parametrize("spelling", AMBIGUOUS)
def test_values_that_dvc_reads_differently_are_refused(tmp_path, spelling):
    """The message names the key, both readings and what to write; nothing is guessed."""
    dvc_value = parse_yaml(f"x: {spelling}", "x")["x"]
    assert dvc_value != yaml.safe_load(f"x: {spelling}")["x"], "not ambiguous after all"
    path = write_text_params(tmp_path, with_value("split.seed", spelling))
    with pytest.raises(ParamsError) as info:
        load_params("split", path=path)
    message = str(info.value)
    assert "has values that DVC reads differently" in message
    assert f"'split.seed' is {dvc_value!r} to DVC" in message
    assert "Write " in message


def test_a_key_that_dvc_reads_differently_is_refused(tmp_path):
    text = repository_params_text().replace("  dropout:", "  on: 1\n  dropout:")
    with pytest.raises(ParamsError, match=r"the keys \[\"'on' \(YAML 1.1: True\)\"\] in 'train'"):
        load_params("train", path=write_text_params(tmp_path, text))


@pytest.mark.parametrize("spelling", ["100", "'0100'", "'off'", "false", "1.5e-3", "1_000", "0x1F"])
def test_values_both_readers_agree_on_are_read_as_dvc_reads_them(tmp_path, spelling):
    path = write_text_params(tmp_path, with_value("split.seed", spelling))
    assert read_params(path) == parse_yaml(path.read_text(encoding="utf-8"), str(path))


def test_repository_params_read_as_dvc_reads_them():
    path = REPO_ROOT / paths.PARAMS_FILE
    assert read_params(path) == parse_yaml(path.read_text(encoding="utf-8"), str(path))


def test_yaml_yes_is_refused_naming_both_readings(tmp_path):
    path = write_text_params(tmp_path, with_value("train.dropout", "yes"))
    with pytest.raises(ParamsError, match=r"'train.dropout' is 'yes' to DVC .* but True to YAML"):
        load_params("train", path=path)


def test_missing_or_non_utf8_file(tmp_path):
    with pytest.raises(ParamsError, match="not found: run the stages from the repository root"):
        load_params("train", path=tmp_path / paths.PARAMS_FILE)
    (tmp_path / paths.PARAMS_FILE).write_bytes(b"train:\n  activation: r\xe9lu\n")
    with pytest.raises(ParamsError, match="is not UTF-8 text"):
        load_params("train", path=tmp_path / paths.PARAMS_FILE)


# --- Through a real stage run: what a user sees ------------------------------------------------


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain copy of the project's files (no git needed to run one stage)."""
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture
def stage_dir(project_copy: Path):
    """The project copy with its original params.yaml restored after each test."""
    original = (project_copy / paths.PARAMS_FILE).read_bytes()
    yield project_copy
    (project_copy / paths.PARAMS_FILE).write_bytes(original)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"train.dropuot": 0.3},
            "unknown key 'train.dropuot' (value 0.3). Did you mean 'dropout'?",
        ),
        ({"train.dropout": 1.0}, "The 'train.dropout' parameter must be a number in [0, 1)."),
        ({"data.image_size": 16}, "The 'data.image_size' parameter must be an integer in [32, "),
        ({"split.val": 0.5, "split.test": 0.5}, "'split.val' + 'split.test' must be below 1"),
        ({"extract.layer": "conv6_block1_out"}, "The 'extract.layer' parameter must be one of"),
    ],
)
def test_split_stage_refuses_bad_params_before_any_work(stage_dir, overrides, expected):
    """Any section's mistake stops even a stage that does not read that section."""
    write_params(stage_dir, overrides)
    result = run(["python", "-m", "stages.split"], stage_dir, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("ERROR: Invalid params.yaml:")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (stage_dir / paths.SPLIT_DIR).exists(), "no output may be written"


# --- Against DVC itself: `dvc params diff` and `dvc exp run -S` in a scratch repository ---------


def dvc_reading(repo: Path, key: str) -> Any:
    """The value of ``key`` in the workspace's params.yaml as `dvc params diff` reports it."""
    diff = json.loads(run(["dvc", "params", "diff", "--all", "--json"], repo).stdout)
    return diff["params.yaml"][key]["new"]


def test_stages_read_every_value_as_dvc_params_diff_does(pipeline_repo):
    """Value by value: what the stages use is what DVC records, or the stage refuses it."""
    for spelling in ["7", "0x1F", "1_000", "'0100'", *AMBIGUOUS]:
        text = (pipeline_repo / paths.PARAMS_FILE).read_text(encoding="utf-8")
        text = re.sub(r"(?m)^(split:\n  seed:) .*$", rf"\1 {spelling}", text)
        (pipeline_repo / paths.PARAMS_FILE).write_text(text, encoding="utf-8")
        dvc = dvc_reading(pipeline_repo, "split.seed")
        try:
            ours = read_params(pipeline_repo / paths.PARAMS_FILE)["split"]["seed"]
        except ParamsError as err:
            assert spelling in AMBIGUOUS, err
            assert f"'split.seed' is {dvc!r} to DVC" in str(err)
        else:
            assert spelling not in AMBIGUOUS
            assert type(ours) is type(dvc) and ours == dvc, spelling


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("split.seed=017", "Got '017' instead (a string: `dvc exp run -S` writes a number with "),
        ("split.seed=017", "write 17, without the leading zero"),
        ("split.seed=1:00", "'split.seed' is '1:00' to DVC"),
        ("split.val=off", "'split.val' is 'off' to DVC"),
    ],
)
def test_dvc_exp_run_set_param_gets_a_message_saying_what_to_write(
    pipeline_repo, override, expected
):
    result = run(["dvc", "exp", "run", "-S", override, "split"], pipeline_repo, check=False)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
