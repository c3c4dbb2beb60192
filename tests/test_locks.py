"""The environment lock (``locks/``, written by ``make lock``): complete, hashed, consistent, split.

What each lock must hold follows from the direct requirements (``requirements*.txt``): every
direct pin, at its version; every package with hashes; no local paths; one version per package
across the locks; test tools and S3 only in the sets that ask for them.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT

LOCKS = {
    "cpu": ["requirements-cpu.txt"],
    "cpu-s3": ["requirements-cpu.txt", "requirements-s3.txt"],
    "gpu": ["requirements-gpu.txt"],
    "gpu-s3": ["requirements-gpu.txt", "requirements-s3.txt"],
    "cpu-ray": ["requirements-cpu.txt", "requirements-ray.txt"],
    "gpu-ray": ["requirements-gpu.txt", "requirements-ray.txt"],
    "test": ["requirements-dev.txt"],
}
TEST_TOOLS = {"pytest", "pytest-xdist", "ruff", "moto", "playwright"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_pins(file: str) -> dict[str, str]:
    """``name: version`` of a requirements file, following its ``-r`` includes."""
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / file).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins |= direct_pins(line[3:].strip())
        elif match := PIN.match(line):
            pins[normalise(match[1])] = match[2]
    return pins


def locked(name: str) -> tuple[dict[str, str], str]:
    """The pins of ``locks/<name>.txt`` and its text."""
    text = (REPO_ROOT / "locks" / f"{name}.txt").read_text(encoding="utf-8")
    pins = {normalise(m[1]): m[2] for m in (PIN.match(line) for line in text.splitlines()) if m}
    return pins, text


@pytest.mark.parametrize("name", list(LOCKS))
def test_lock_holds_every_direct_pin_each_with_hashes_and_no_local_path(name):
    pins, text = locked(name)
    for file in LOCKS[name]:
        for package, version in direct_pins(file).items():
            assert pins.get(package) == version, f"{package}=={version} ({file}) in {name}"
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert len(entries) == len(pins) > 50
    assert all("--hash=sha256:" in entry for entry in entries), "a package without a hash"
    assert not re.search(r"file:|/opt/|/work/|/home/|/root/|--index-url|--find-links", text)


def test_every_package_has_one_version_in_every_lock():
    every = [locked(name)[0] for name in LOCKS]
    for package in set().union(*every):
        versions = {pins[package] for pins in every if package in pins}
        assert len(versions) == 1, f"{package}: {versions}"


def test_the_pipeline_sets_hold_no_test_tools_and_s3_only_as_the_extra():
    for name in ("cpu", "gpu", "cpu-s3", "gpu-s3"):
        pins = locked(name)[0]
        assert not TEST_TOOLS & set(pins), name
        assert ("dvc-s3" in pins) == name.endswith("-s3"), name
        assert "ray" not in pins, name
    assert TEST_TOOLS | {"dvc-s3", "tensorflow-cpu"} <= set(locked("test")[0])


def test_make_installs_from_the_locks():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "LOCK ?= locks/cpu.txt" in makefile
    assert "--require-hashes -r $(LOCK)" in makefile
    assert "--require-hashes -r locks/test.txt" in makefile
