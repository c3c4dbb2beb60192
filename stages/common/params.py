"""Load and validate ``params.yaml``: the one place that knows every key.

Each stage asks for the sections it reads (``load_params("train")``); the whole file is
checked first, so a typo anywhere stops every stage before any work, with a message in the
style of scikit-learn's parameter validation: the key, the value, and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")

# ResNet50 layers whose output can be pooled and cached: the output of every residual
# block, plus the stem. Listed here (not read from Keras) so validation needs no TensorFlow.
RESNET50_BLOCKS = {"conv2": 3, "conv3": 4, "conv4": 6, "conv5": 3}
RESNET50_LAYERS = ["pool1_pool"] + [
    f"{stage}_block{i}_out" for stage, n in RESNET50_BLOCKS.items() for i in range(1, n + 1)
]
MIN_IMAGE_SIZE = 32  # keras.applications.ResNet50 refuses smaller inputs
MAX_IMAGE_SIZE = 1024


class ParamsError(ValueError):
    """A parameter in params.yaml is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Rule:
    """What one key accepts: a check returning an error text (or None) and its description."""

    allowed: str
    check: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(lo: int, hi: int | None = None) -> Rule:
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Rule(text, lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi))


def number(lo: float, hi: float, *, hi_open: bool = True, lo_open: bool = False) -> Rule:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return Rule(
        f"a number in {left}{lo}, {hi}{right}",
        lambda v: (
            _is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        ),
    )


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", lambda v: v is None or rule.check(v))


def non_empty_string() -> Rule:
    return Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")


def weights_spec() -> Rule:
    return Rule(
        "'imagenet', 'random', or the path of a Keras weights file (*.weights.h5 or *.h5)",
        lambda v: (
            isinstance(v, str)
            and (v in ("imagenet", "random") or v.endswith((".h5", ".weights.h5")))
        ),
    )


def layer_widths() -> Rule:
    return Rule(
        "a list of 0 to 8 integers in [1, 8192] (hidden layer widths; [] for none)",
        lambda v: (
            isinstance(v, list) and len(v) <= 8 and all(_is_int(w) and 1 <= w <= 8192 for w in v)
        ),
    )


SCHEMA: dict[str, dict[str, Rule]] = {
    "data": {
        "source": one_of("digits", "folder"),
        "folder": non_empty_string(),
        "image_size": integer(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        "max_per_class": optional(integer(1)),
    },
    "split": {
        "seed": integer(0),
        "val": number(0, 1, lo_open=True),
        "test": number(0, 1, lo_open=True),
    },
    "augment": {
        "seed": integer(0),
        "copies": integer(0, 100),
        "rotation": number(0, 0.5, hi_open=False),
        "translation": number(0, 0.5, hi_open=False),
        "zoom": number(0, 0.9, hi_open=False),
        "batch_size": integer(1, 4096),
    },
    "extract": {
        "weights": weights_spec(),
        "layer": one_of(*RESNET50_LAYERS),
        "pooling": one_of("avg", "max"),
        "batch_size": integer(1, 4096),
        "seed": integer(0),
    },
    "train": {
        "seed": integer(0),
        "layers": layer_widths(),
        "activation": one_of("relu", "gelu", "elu", "selu", "swish", "tanh", "sigmoid"),
        "dropout": number(0, 1),
        "epochs": integer(1, 100_000),
        "batch_size": integer(1, 65_536),
        "learning_rate": number(0, 1, lo_open=True),
    },
    "evaluate": {
        "seed": integer(0),
        "grid_size": integer(1, 400),
    },
}


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}'.{hint} Allowed keys: {known}."


def validate(params: Any) -> dict[str, dict[str, Any]]:
    """Check every section and key of a parsed params.yaml; raise ParamsError listing all problems."""
    if not isinstance(params, dict):
        raise ParamsError("params.yaml must be a mapping of sections (data, split, ...).")
    problems: list[str] = []
    for section, value in params.items():
        if section not in SCHEMA:
            problems.append(_unknown_key_message(str(section), list(SCHEMA)))
            continue
        if not isinstance(value, dict):
            problems.append(f"'{section}' must be a mapping of keys, got {value!r}.")
            continue
        rules = SCHEMA[section]
        for key, v in value.items():
            if key not in rules:
                problems.append(f"{section}: " + _unknown_key_message(str(key), list(rules)))
            elif not rules[key].check(v):
                problems.append(
                    f"The '{section}.{key}' parameter must be {rules[key].allowed}. Got {v!r} instead."
                )
        for key in rules:
            if key not in value:
                problems.append(f"missing key '{section}.{key}' ({rules[key].allowed}).")
    for section in SCHEMA:
        if section not in params:
            problems.append(f"missing section '{section}'.")
    split = params.get("split")
    fractions_valid = isinstance(split, dict) and all(
        _is_number(split.get(k)) for k in ("val", "test")
    )
    if fractions_valid and split["val"] + split["test"] >= 1:
        problems.append(
            f"'split.val' + 'split.test' must be below 1 so that some images are left to "
            f"train on. Got {split['val']} + {split['test']} = {split['val'] + split['test']:g}."
        )
    if problems:
        raise ParamsError("Invalid params.yaml:\n  - " + "\n  - ".join(problems))
    return params


def load_params(*sections: str, path: Path = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Read and validate params.yaml, returning only the requested sections."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stages from the repository root.") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    params = validate(params)
    return {name: params[name] for name in sections}
