"""The pages `dvc plots show` and `dvc plots diff` write render offline, in a real browser.

A tiny git + DVC repository in tmp_path gets the project's .dvc/config and page template, plot
definitions like the project's dvc.yaml and two commits of plot data. Headless Chromium, with
every host name unresolvable, opens each page; the test then reads the DOM (an svg or canvas of
marks per Vega plot) and a screenshot (not blank). Without Chromium the browser tests skip,
unless REQUIRE_CHROMIUM=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import git_commit, run
from PIL import Image

from tools.plots_template import render_template

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
    # Offline for real: no host name resolves, so a CDN script could not load.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--window-size=1400,1400",
    # Virtual time runs until the page is idle (vega-embed is asynchronous) or 20 s have passed.
    "--virtual-time-budget=20000",
]

# The same kinds of plots as the project's dvc.yaml: confusion matrices and linear curves.
DVC_YAML = """\
plots:
  - Test confusion matrix:
      template: confusion
      x: actual
      y:
        plots/predictions.csv: predicted
  - Test confusion matrix (normalised):
      template: confusion_normalized
      x: actual
      y:
        plots/predictions.csv: predicted
  - Accuracy per epoch:
      x: epoch
      y:
        plots/train_log.csv: [accuracy, val_accuracy]
  - Loss per epoch:
      x: epoch
      y:
        plots/train_log.csv: [loss, val_loss]
"""
VEGA_PLOTS = 4


def needs_chromium() -> None:
    if CHROMIUM is None:
        message = "no chromium on PATH (apt-get install chromium)"
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"REQUIRE_CHROMIUM=1 but {message}")
        pytest.skip(message)


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo, timeout=300).stdout


def write_plot_data(repo: Path, seed: int, error_rate: float) -> None:
    """predictions.csv (actual, predicted) and train_log.csv (one row per epoch), like train/evaluate."""
    rng = np.random.default_rng(seed)
    actual = np.repeat(np.arange(10), 12)
    wrong = rng.random(actual.size) < error_rate
    predicted = np.where(wrong, (actual + rng.integers(1, 10, actual.size)) % 10, actual)
    rows = ["row,actual,predicted"] + [
        f"{i},{a},{p}" for i, (a, p) in enumerate(zip(actual, predicted, strict=True))
    ]
    plots = repo / "plots"
    plots.mkdir(exist_ok=True)
    (plots / "predictions.csv").write_text("\n".join(rows) + "\n")
    log = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    for epoch in range(12):
        loss = 2.0 * np.exp(-epoch / 3) + error_rate
        log.append(f"{epoch},{1 - loss / 3:.4f},{loss:.4f},{1 - loss / 2.5:.4f},{loss * 1.2:.4f}")
    (plots / "train_log.csv").write_text("\n".join(log) + "\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the project's plots config and two commits of plot data."""
    needs_chromium()
    repo = tmp_path_factory.mktemp("plots_repo")
    run(["git", "init", "-q"], repo)
    dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / ".dvc" / "plots").mkdir()
    shutil.copy(TEMPLATE, repo / ".dvc" / "plots" / TEMPLATE.name)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    write_plot_data(repo, seed=0, error_rate=0.3)
    git_commit(repo, "first run")
    write_plot_data(repo, seed=1, error_rate=0.05)
    git_commit(repo, "second run")
    return repo


def render_page(repo: Path, command: list[str], out: str) -> Path:
    """Run `dvc plots show/diff -o out`, check the page is self-contained, return its path."""
    printed = dvc(repo, "plots", *command, "-o", out)
    page = repo / out / "index.html"
    assert page.as_uri() in printed
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", html), "the page still loads scripts from elsewhere"
    assert html.count("vegaEmbed('#") == VEGA_PLOTS
    return page


def open_in_chromium(page: Path, screenshot: Path, profile: Path) -> str:
    """Load the page in headless Chromium; return the DOM after scripts ran, save a screenshot."""
    args = [f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--dump-dom", page.as_uri()]
    result = run([CHROMIUM, *CHROMIUM_FLAGS, *args], page.parent, timeout=180)
    assert screenshot.is_file(), result.stderr[-3000:]
    return result.stdout


def plot_segments(html: str, dom: str) -> dict[str, str]:
    """The DOM from each Vega plot's <div id> to the next one, by plot id."""
    ids = re.findall(r"vegaEmbed\('#([^']+)'", html)
    starts = sorted((dom.index(f'<div id="{plot_id}"'), plot_id) for plot_id in ids)
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    return {plot_id: dom[start:end] for (start, plot_id), end in zip(starts, ends, strict=True)}


def drawn_marks(segment: str) -> bool:
    return re.search(r'<(svg|canvas)\b[^>]*class="marks"', segment) is not None


def assert_not_blank(screenshot: Path) -> None:
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    ink = (pixels < 240).any(axis=2).mean()
    # Heatmap cells and curves are coloured; text and axes alone are grey.
    colour = ((pixels.max(axis=2) - pixels.min(axis=2)) > 60).mean()
    assert ink > 0.02, f"screenshot nearly blank: {ink:.2%} non-white pixels"
    assert colour > 0.005, f"screenshot has almost no colour: {colour:.2%} coloured pixels"


@pytest.mark.parametrize(
    ("command", "revisions"),
    [(["show"], ["workspace"]), (["diff", "HEAD~1", "HEAD"], ["HEAD~1", "HEAD"])],
    ids=["show", "diff"],
)
def test_plots_page_draws_every_plot_offline(
    repo: Path, tmp_path: Path, command: list[str], revisions: list[str]
) -> None:
    page = render_page(repo, command, f"out_{command[0]}")
    dom = open_in_chromium(page, tmp_path / "page.png", tmp_path / "profile")
    segments = plot_segments(page.read_text(encoding="utf-8"), dom)
    assert len(segments) == VEGA_PLOTS
    undrawn = [plot_id for plot_id, segment in segments.items() if not drawn_marks(segment)]
    assert not undrawn, f"vega-embed drew nothing in {undrawn}"
    for revision in revisions:  # legends and facet headers name every revision
        assert f">{revision}</text>" in dom, f"revision {revision} missing from the drawn plots"
    assert_not_blank(tmp_path / "page.png")


def test_committed_template_is_self_contained() -> None:
    """.dvc/config points at the template, which inlines vega-embed and loads nothing."""
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\s*html_template\s*=\s*plots/offline\.html\s*$", config, re.MULTILINE)
    page = TEMPLATE.read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1
    assert "{scripts}" not in page  # DVC fills {scripts} with its CDN <script> tags
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "window.vegaEmbed=" in page
    assert TEMPLATE.stat().st_size < 3_000_000


def test_render_template_refuses_a_bundle_that_would_break_the_page() -> None:
    versions = {
        "vega": "6",
        "vega_lite": "5.21.0",
        "vega_embed": "7",
        "vl_convert": "1",
        "vl_version": "5.21",
    }
    page = render_template("window.vegaEmbed=f;", versions)
    assert page.count("{plot_divs}") == 1 and "window.vegaEmbed=f;" in page
    for bundle in (
        "window.vegaEmbed=f;'</script>'",
        "window.vegaEmbed=f;'{plot_divs}'",
        "var x=1;",
    ):
        with pytest.raises(ValueError):
            render_template(bundle, versions)
