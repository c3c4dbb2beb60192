"""dvc.yaml agrees with the code: each stage's code deps, data deps, outs and params sections.

A code dependency left out of dvc.yaml makes DVC keep stale results silently, and a stale one
re-runs a stage for nothing; the same holds for data. So nothing here is hand-kept:

* code deps: the stage's module and every module of ``stages/`` it imports, transitively
  (found with ``ast``, imports inside functions included);
* data deps and outs: the stage module's ``READS`` and ``WRITES``, made of ``stages.common.paths``;
* params: the sections its ``load_params(...)`` calls name.

Each must equal what dvc.yaml declares for the stage, in both directions. And the committed
dvc.lock must record the code as it is (a code change committed without its `dvc repro` would
make a fresh clone's `dvc status` call every such stage changed).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

DVC_YAML = REPO_ROOT / "dvc.yaml"
DVC_LOCK = REPO_ROOT / "dvc.lock"
CODE_ROOT = "stages"


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"]


def stage_module(stage: dict) -> str:
    match = re.fullmatch(r"python -m ([\w.]+)", stage["cmd"].strip())
    assert match, f"cmd {stage['cmd']!r} is not `python -m stages.<module>`"
    return match.group(1)


def module_file(module: str) -> Path | None:
    """The file of a module of this project (``stages.x.y``), or None if there is none."""
    base = REPO_ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def direct_imports(path: Path) -> set[str]:
    """The ``stages`` modules one file imports, anywhere in it (functions and branches too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from stages.common import paths` imports the module stages.common.paths.
            names = [
                f"{node.module}.{alias.name}"
                if module_file(f"{node.module}.{alias.name}")
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == CODE_ROOT}
    return found


def code_deps(module: str) -> set[str]:
    """Files of ``module`` and of everything it imports from ``stages``, transitively.

    Package ``__init__.py`` files are left out: they hold only a docstring (tested below).
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        assert path is not None, f"{name} (imported by the {module} stage) has no file"
        todo += sorted(direct_imports(path))
    files = {module_file(name) for name in seen}
    return {str(p.relative_to(REPO_ROOT)) for p in files if p.name != "__init__.py"}


def params_sections(path: Path) -> set[str]:
    """The section names passed to ``load_params(...)`` in one file."""
    sections = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_params":
            sections |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)}
    return sections


def entries(items: list) -> set[str]:
    """dvc.yaml list entries (``path`` or ``{path: {options}}``) as paths."""
    return {item if isinstance(item, str) else next(iter(item)) for item in items or []}


def declared_outs(stage: dict) -> set[str]:
    return set().union(*(entries(stage.get(key)) for key in ("outs", "metrics", "plots")))


STAGES = dvc_stages()
LOCKED_STAGES: dict[str, dict] = yaml.safe_load(DVC_LOCK.read_text(encoding="utf-8"))["stages"]


def test_derivation_finds_imports_inside_functions() -> None:
    # stages.common.weights imports the npm route inside a function: still a code dependency.
    assert "stages/common/imagenet_npm.py" in code_deps("stages.extract")
    assert code_deps("stages.split") >= {"stages/split.py", "stages/common/paths.py"}
    assert "stages/common/tf.py" not in code_deps("stages.split")


def test_package_inits_hold_only_a_docstring() -> None:
    """What lets code_deps leave ``__init__.py`` out: there is nothing in them to depend on."""
    for init in (REPO_ROOT / CODE_ROOT).rglob("__init__.py"):
        body = ast.parse(init.read_text(encoding="utf-8")).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), (
            f"{init.relative_to(REPO_ROOT)} holds code: add it to code_deps and dvc.yaml"
        )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_match_the_imports(name: str) -> None:
    stage = STAGES[name]
    expected = code_deps(stage_module(stage))
    declared = {d for d in entries(stage["deps"]) if d.startswith(f"{CODE_ROOT}/")}
    assert not expected - declared, (
        f"dvc.yaml stage '{name}' lacks code deps {sorted(expected - declared)}: "
        f"{stage_module(stage)} imports them, so a change there must re-run the stage"
    )
    assert not declared - expected, (
        f"dvc.yaml stage '{name}' lists code deps {sorted(declared - expected)} that "
        f"{stage_module(stage)} does not import (directly or not): remove them"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_lock_records_the_code_as_it_is(name: str) -> None:
    stale = [
        dep["path"]
        for dep in LOCKED_STAGES[name]["deps"]
        if dep["path"].startswith(f"{CODE_ROOT}/")
        and hashlib.md5((REPO_ROOT / dep["path"]).read_bytes()).hexdigest() != dep["md5"]
    ]
    assert not stale, (
        f"dvc.lock stage '{name}' records other contents of {stale}: run `dvc repro` (or `dvc "
        "commit` where the change cannot alter the outputs) and commit dvc.lock"
    )


def test_lock_holds_only_the_stages_of_dvc_yaml() -> None:
    """DVC keeps a removed or renamed stage's entry in dvc.lock; it is parsed on every command."""
    stale = sorted(set(LOCKED_STAGES) - set(STAGES))
    assert not stale, f"dvc.lock holds stages that dvc.yaml no longer has: {stale}; delete them"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_data_deps_and_outs_match_the_stage(name: str) -> None:
    stage = STAGES[name]
    module = importlib.import_module(stage_module(stage))
    reads = {str(p) for p in module.READS}
    writes = {str(p) for p in module.WRITES}
    declared = {
        d for d in entries(stage["deps"]) if not d.startswith(f"{CODE_ROOT}/") and "${" not in d
    }
    assert declared == reads, (
        f"dvc.yaml stage '{name}' data deps differ from {module.__name__}.READS: "
        f"missing {sorted(reads - declared)}, extra {sorted(declared - reads)}"
    )
    assert declared_outs(stage) == writes, (
        f"dvc.yaml stage '{name}' outs/metrics/plots differ from {module.__name__}.WRITES: "
        f"undeclared {sorted(writes - declared_outs(stage))}, "
        f"extra {sorted(declared_outs(stage) - writes)}"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_sections_match_load_params(name: str) -> None:
    stage = STAGES[name]
    used = params_sections(module_file(stage_module(stage)))
    assert set(stage.get("params", [])) == used, (
        f"dvc.yaml stage '{name}' params {stage.get('params')} differ from the sections its "
        f"module loads: {sorted(used)}"
    )


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = {
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
        for p in (REPO_ROOT / CODE_ROOT).rglob("*.py")
        if p.name != "__init__.py"
    }
    graph = {m: direct_imports(module_file(m)) & modules for m in modules}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            name, path = stack.pop()
            for nxt in sorted(graph[name]):
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for c in (cycle_from(m) for m in sorted(modules)) if c]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"


def test_every_output_has_one_stage() -> None:
    owners: dict[str, str] = {}
    for name, stage in STAGES.items():
        for out in declared_outs(stage):
            assert out not in owners, f"{out} is an out of both '{owners[out]}' and '{name}'"
            owners[out] = name


APP_ROOT = "app"


def imported_roots(path: Path) -> set[str]:
    """The top-level packages one file imports, anywhere in it (absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_stage_module_imports_the_app() -> None:
    """A stage's code deps are ``stages/`` only: an import of ``app/`` would be a dependency that
    dvc.yaml cannot see (and predict or serve would then be part of the pipeline)."""
    importers = sorted(
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / CODE_ROOT).rglob("*.py")
        if APP_ROOT in imported_roots(p)
    )
    assert not importers, (
        f"{importers} import the {APP_ROOT} package: no stage may depend on it; "
        "move what they use into stages/common/"
    )


def test_every_top_level_stages_module_is_a_stage() -> None:
    """``stages/`` holds the DVC stages and ``stages/common/``: a command that is not a stage of
    dvc.yaml (predict, serve) belongs in ``app/``."""
    modules = {
        f"{CODE_ROOT}.{p.stem}"
        for p in (REPO_ROOT / CODE_ROOT).glob("*.py")
        if p.stem != "__init__"
    }
    commands = {stage_module(stage) for stage in STAGES.values()}
    assert modules == commands, (
        f"stages/ modules that are no stage of dvc.yaml: {sorted(modules - commands)} (move them to "
        f"{APP_ROOT}/); dvc.yaml stages with no module: {sorted(commands - modules)}"
    )
    assert {p.name for p in (REPO_ROOT / CODE_ROOT).iterdir() if p.is_dir()} <= {
        "common",
        "__pycache__",
    }, "stages/ holds a folder other than common/"
    assert not [
        p.name
        for p in (REPO_ROOT / CODE_ROOT).iterdir()
        if p.is_file() and p.suffix not in (".py", ".pyc")
    ], "stages/ holds a file that is no stage module (a page or data file belongs with its user)"
