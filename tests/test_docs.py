"""README.md and docs/: every figure comes from the records, every cited section exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tools import docs

ROOT = Path(__file__).resolve().parents[1]
# A section cited in code or params.yaml: README "Title", README, "Title", (README: Title) or
# docs/page.md "Title".
CITATION = re.compile(r'(README|docs/[\w-]+\.md)(?:,? "([^"]+)"|: ([A-Z][\w\s]+\w))')
CODE = ["stages", "app", "tools", "bench", "tests"]


def headings(page: Path) -> set[str]:
    return {
        line.lstrip("#").strip().lower()
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def citations() -> list[tuple[str, str, str]]:
    files = [p for folder in CODE for p in (ROOT / folder).rglob("*.py") if p != Path(__file__)]
    files += [ROOT / "params.yaml", ROOT / "dvc.yaml"]
    found = []
    for path in files:
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            page, title = match.group(1), " ".join((match.group(2) or match.group(3)).split())
            found.append(
                (str(path.relative_to(ROOT)), "README.md" if page == "README" else page, title)
            )
    return found


def test_committed_pages_are_what_the_records_generate():
    stale = [str(p.relative_to(ROOT)) for p in docs.stale_pages(ROOT)]
    assert not stale, f"{stale}: run `make docs` (python -m tools.docs) and commit"


def test_every_region_names_a_generator_and_every_generator_is_used():
    used = {m.group(1) for p in docs.pages(ROOT) for m in docs.REGION.finditer(p.read_text())}
    assert used <= set(docs.GENERATORS)
    assert set(docs.GENERATORS) <= used, "a generator no page uses"


def test_a_changed_record_makes_the_page_stale(tmp_path: Path):
    """The check can fail: a page generated from one record differs once the record changes."""
    for rel in ("metrics", "docs"):
        (tmp_path / rel).mkdir()
    for name in ("metrics.json", "baselines_pixels.json", "baselines_features.json"):
        (tmp_path / "metrics" / name).write_bytes((ROOT / "metrics" / name).read_bytes())
    page = tmp_path / "docs" / "page.md"
    page.write_text("<!-- generated:results -->\n<!-- /generated -->\n")
    assert docs.stale_pages(tmp_path, write=True) == [page]
    assert docs.stale_pages(tmp_path) == []
    metrics = tmp_path / "metrics" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["test"]["right"] -= 1  # one test image fewer right
    metrics.write_text(json.dumps(record))
    assert docs.stale_pages(tmp_path) == [page]


def test_an_unknown_region_is_refused():
    with pytest.raises(KeyError, match="unknown generated region 'nothing'"):
        docs.render("<!-- generated:nothing --><!-- /generated -->")


@pytest.mark.parametrize(("source", "page", "title"), citations())
def test_every_section_that_code_cites_exists(source: str, page: str, title: str):
    assert (ROOT / page).is_file(), f"{source} cites {page}, which does not exist"
    assert title.lower() in headings(ROOT / page), (
        f'{source} cites {page} "{title}": no such section'
    )
