"""Load and validate ``params.yaml``: the one place that knows every key.

Each stage asks for the sections it reads (``load_params("train")``); the whole file is
checked first, so a typo anywhere stops every stage before any work, with a message in the
style of scikit-learn's parameter validation: the key, the value, and what is allowed.

The file is read with DVC's own parser (YAML 1.2), so a stage runs with exactly the values that
dvc.lock records; a value that YAML 1.1 (PyYAML) reads otherwise (``0100``, ``017``, ``1:00``,
``yes``/``no``/``on``/``off``) is refused with the spelling to use (docs/reproducibility.md).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.common.paths import PARAMS_FILE

# ResNet50 layers whose output can be pooled and cached: the output of every residual
# block, plus the stem. Listed here (not read from Keras) so validation needs no TensorFlow.
RESNET50_BLOCKS = {"conv2": 3, "conv3": 4, "conv4": 6, "conv5": 3}
RESNET50_LAYERS = ["pool1_pool"] + [
    f"{stage}_block{i}_out" for stage, n in RESNET50_BLOCKS.items() for i in range(1, n + 1)
]
MIN_IMAGE_SIZE = 32  # keras.applications.ResNet50 refuses smaller inputs
MAX_IMAGE_SIZE = 1024
MAX_SEED = 2**31 - 1  # numpy and TensorFlow both accept it, with room for seed + i


class ParamsError(ValueError):
    """A parameter in params.yaml is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Rule:
    """What one key accepts: a description for messages and a check of a value."""

    allowed: str
    check: Callable[[Any], bool]
    choices: tuple[str, ...] = ()  # for one_of: the names a typo is matched against


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


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


def one_of(*choices: str) -> Rule:
    return Rule(f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices, choices)


def seed() -> Rule:
    return integer(0, MAX_SEED)


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
        "source": one_of("digits", "mnist", "folder"),
        "folder": non_empty_string(),
        "image_size": integer(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        "max_per_class": optional(integer(1)),
        "fit": one_of("pad", "center_crop", "stretch"),
        "crop": one_of("ink", "none"),
        "crop_margin": number(0, 1, hi_open=False),
        "normalise": one_of("none", "contrast", "illumination"),
    },
    "split": {
        "seed": seed(),
        "val": number(0, 1, lo_open=True),
        "test": number(0, 1, lo_open=True),
    },
    "augment": {
        "seed": seed(),
        "copies": integer(0, 100),
        "rotation": number(0, 0.5, hi_open=False),
        "translation": number(0, 0.5, hi_open=False),
        "zoom": number(0, 0.9, hi_open=False),
        "brightness": number(0, 1, hi_open=False),
        "contrast": number(0, 1, hi_open=False),
        "batch_size": integer(1, 4096),
    },
    "extract": {
        "weights": weights_spec(),
        "layer": one_of(*RESNET50_LAYERS),
        "pooling": one_of("avg", "max"),
        "batch_size": integer(1, 4096),
        "precision": one_of("float32", "mixed_float16", "mixed_bfloat16"),
        "seed": seed(),
        "engine": one_of("local", "ray"),
    },
    "train": {
        "seed": seed(),
        "layers": layer_widths(),
        "activation": one_of("relu", "gelu", "elu", "selu", "swish", "tanh", "sigmoid"),
        "dropout": number(0, 1),
        "epochs": integer(1, 100_000),
        "batch_size": integer(1, 65_536),
        "learning_rate": number(0, 1, lo_open=True),
        "l2": number(0, 1),
        "label_smoothing": number(0, 1),
        "lr_schedule": one_of("constant", "cosine"),
        "patience": integer(0, 100_000),
        "monitor": one_of("val_loss", "val_log_loss", "val_accuracy"),
        "min_delta": number(0, 1),
        "precision": one_of("auto", "float32", "mixed_bfloat16"),
    },
    "baselines": {
        "pixel_size": integer(2, 64),
        "train_on": one_of("original", "augmented"),
    },
    "evaluate": {
        "seed": seed(),
        "grid_size": integer(1, 400),
    },
}


def _did_you_mean(value: Any, known: list[str]) -> str:
    """A suggestion for a mistyped name: the same name in other case, else the closest one."""
    if not isinstance(value, str):
        return ""
    lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(value.lower(), list(lower), n=1)
    return f" Did you mean '{lower[close[0]]}'?" if close else ""


def _unknown_key_message(key: str, value: Any, known: list[str]) -> str:
    where, _, name = key.rpartition(".")
    return (
        f"unknown key '{key}' (value {value!r}).{_did_you_mean(name, known)} "
        f"Allowed keys{f' in {where!r}' if where else ''}: {known}."
    )


def _value_hint(value: Any, rule: Rule) -> str:
    """Why a value that looks right is not: YAML booleans, quoted numbers, a missing value."""
    if isinstance(value, bool):
        return " (YAML reads true/false/yes/no/on/off as booleans)"
    if value is None:
        return " (an empty value or ~ is null in YAML)"
    if isinstance(value, str) and re.fullmatch(r"[-+]?0[0-9]+", value):
        return (
            " (a string: `dvc exp run -S` writes a number with a leading zero in quotes; "
            f"write {int(value)}, without the leading zero)"
        )
    if isinstance(value, str):
        try:
            float(value)
            return " (a string, not a number: remove the quotes)"
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer() and "integer" in rule.allowed:
        return f" (write {int(value)}, without a decimal point)"
    return ""


def _value_message(section: str, key: str, value: Any, rule: Rule) -> str:
    head = f"The '{section}.{key}' parameter must be {rule.allowed}. Got {value!r} instead"
    if rule.choices:
        return f"{head}.{_did_you_mean(value, list(rule.choices))}"
    return f"{head}{_value_hint(value, rule)}."


def _section_problems(section: str, value: Any) -> list[str]:
    """The problems of one known section: unknown, invalid and missing keys."""
    if not isinstance(value, dict):
        return [f"'{section}' must be a mapping of keys (key: value lines), got {value!r}."]
    rules = SCHEMA[section]
    problems = []
    for key, v in value.items():
        if key not in rules:
            problems.append(_unknown_key_message(f"{section}.{key}", v, list(rules)))
        elif not rules[key].check(v):
            problems.append(_value_message(section, str(key), v, rules[key]))
    problems += [
        f"missing key '{section}.{key}' (it must be {rule.allowed})."
        for key, rule in rules.items()
        if key not in value
    ]
    return problems


def _split_problems(params: dict) -> list[str]:
    """split.val + split.test must leave images to train on (checked once both are valid)."""
    split = params.get("split")
    if not isinstance(split, dict):
        return []
    rules = SCHEMA["split"]
    if not all(k in split and rules[k].check(split[k]) for k in ("val", "test")):
        return []
    total = split["val"] + split["test"]
    if total < 1:
        return []
    return [
        f"'split.val' + 'split.test' must be below 1 so that some images are left to train "
        f"on. Got {split['val']!r} + {split['test']!r} = {total:g} instead."
    ]


def validate_section(section: str, value: Any) -> dict[str, Any]:
    """Check one section given as a dict (code that builds one, e.g. a benchmark, calls this)."""
    problems = _section_problems(section, value)
    if problems:
        raise ParamsError(f"Invalid '{section}' params:\n  - " + "\n  - ".join(problems))
    return value


def validate(params: Any) -> dict[str, dict[str, Any]]:
    """Check every section and key of a parsed params.yaml; raise ParamsError listing all problems."""
    if not isinstance(params, dict):
        raise ParamsError(
            f"params.yaml must be a mapping of sections {list(SCHEMA)}, got {params!r}."
        )
    problems: list[str] = []
    for section, value in params.items():
        if section in SCHEMA:
            problems += _section_problems(section, value)
        else:
            problems.append(_unknown_key_message(str(section), value, list(SCHEMA)))
    problems += [f"missing section '{section}'." for section in SCHEMA if section not in params]
    problems += _split_problems(params)
    if problems:
        raise ParamsError("Invalid params.yaml:\n  - " + "\n  - ".join(problems))
    return params


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: SafeLoader reports it
            if key in seen:
                raise ParamsError(
                    f"key {key!r} appears twice in one section (line "
                    f"{key_node.start_mark.line + 1} of params.yaml); YAML would silently keep "
                    "only the last. Delete one."
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-3 as the string '1e-3'; YAML 1.2 (and DVC, and people) read a
# float. Accept exponents without a decimal point as floats, as YAML 1.2 does.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_as_yaml_1_1(text: str, path: Path) -> Any:
    """PyYAML's reading (YAML 1.1, duplicate keys refused): the reference for what to refuse."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as err:
        where = str(err).replace('"<unicode string>"', str(path))
        raise ParamsError(f"{path} is not valid YAML: {where}") from None


def _parse_as_dvc(text: str, path: Path) -> Any:
    """DVC's own reading of params.yaml (ruamel.yaml, YAML 1.2): what dvc.lock records."""
    from dvc.utils.serialize import parse_yaml

    try:
        return parse_yaml(text, str(path))
    except Exception as err:  # DVC's YAMLFileCorruptedError wraps ruamel's reason
        reason = str(err.__cause__ or err).splitlines()[0]
        raise ParamsError(f"DVC cannot read {path}: {reason}") from None


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _yaml_spelling(value: Any) -> str:
    """How to write ``value`` so that YAML 1.1 and 1.2 both read it so: strings quoted."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _disagreement(key: str, dvc: Any, yaml_1_1: Any) -> str:
    suggestion = f"Write {_yaml_spelling(dvc)} for DVC's reading"
    if isinstance(yaml_1_1, bool | int | float) or yaml_1_1 is None:
        suggestion += f", or {_yaml_spelling(yaml_1_1)} for the other"
    return (
        f"'{key}' is {dvc!r} to DVC (YAML 1.2, what dvc.lock records) but {yaml_1_1!r} to "
        f"YAML 1.1 readers such as PyYAML (leading zeros, 1:00 and yes/no/on/off differ "
        f"between the two). {suggestion}."
    )


def disagreements(dvc: Any, yaml_1_1: Any, key: str = "") -> list[str]:
    """Every key whose value DVC and a YAML 1.1 reader see differently, as messages."""
    if isinstance(dvc, dict) and isinstance(yaml_1_1, dict):
        pairs = list(zip(dvc.items(), yaml_1_1.items(), strict=True))  # same keys, same order
        odd_keys = [f"{a!r} (YAML 1.1: {b!r})" for (a, _), (b, _) in pairs if not _same_value(a, b)]
        if odd_keys:
            where = f"in '{key}'" if key else "at the top"
            return [f"the keys {odd_keys} {where} are read differently by DVC; quote them."]
        return [
            problem
            for (name, a), (_, b) in pairs
            for problem in disagreements(a, b, f"{key}.{name}" if key else str(name))
        ]
    if isinstance(dvc, list) and isinstance(yaml_1_1, list) and len(dvc) == len(yaml_1_1):
        return [
            problem
            for i, (a, b) in enumerate(zip(dvc, yaml_1_1, strict=True))
            for problem in disagreements(a, b, f"{key}[{i}]")
        ]
    return [] if _same_value(dvc, yaml_1_1) else [_disagreement(key, dvc, yaml_1_1)]


def read_params(path: Path = PARAMS_FILE) -> Any:
    """Parse params.yaml as DVC does, without validating it.

    The stages use DVC's reading, so they run with the values dvc.lock records. Any value that a
    YAML 1.1 reader (PyYAML, and people used to it) would read otherwise is refused, naming the
    key and the spelling to use; duplicate keys are refused too.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stages from the repository root.") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text ({err}). Save it as UTF-8.") from None
    yaml_1_1 = _parse_as_yaml_1_1(text, path)
    if yaml_1_1 is None:
        return None  # an empty file (DVC reads {}): validate says what it must hold
    dvc = _parse_as_dvc(text, path)
    problems = disagreements(dvc, yaml_1_1)
    if problems:
        raise ParamsError(
            f"{path} has values that DVC reads differently:\n  - " + "\n  - ".join(problems)
        )
    return dvc


def load_params(*sections: str, path: Path = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Read and validate params.yaml, returning only the requested sections."""
    params = validate(read_params(path))
    return {name: params[name] for name in sections}
