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


def test_the_scale_figures_read_older_and_partial_records(tmp_path: Path):
    """bench/scale.json from before start-up was measured (no image size, CPUs or start-up),
    and one where Ray was not installed: every figure or an en dash, never a KeyError."""
    (tmp_path / "bench").mkdir()
    record = tmp_path / "bench" / "scale.json"
    train = [{"vectors": 2000, "feature_bytes": 8192000, "peak_rss_bytes": 711073792}]
    old = [
        {"engine": "local", "nodes": 1, "images_per_s": 161.5},
        {"engine": "ray", "nodes": 2, "cpus_per_node": 1, "images_per_s": 3.8},
    ]
    record.write_text(json.dumps({"command": "c", "train": train, "extract": old, "gpu": "none"}))
    text = docs.scale(tmp_path)
    assert "| ray | \u2013 | 2 | 2 | 4 | 2 | \u2013 |" in text and "GPU: none" in text
    assert "one hour: 580,000 images" in text  # 161.5 images/s x 3,600 s, 2 significant digits
    local = {"engine": "local", "image_size": 224, "nodes": 1, "cpus": 2, "images": [128, 512]}
    local |= {"call_s": [11.0, 16.0], "images_per_s": 76.8, "images_per_s_per_cpu": 38.4}
    skipped = {"engine": "ray", "skipped": "Ray is not installed"}
    extract = [local | {"startup_s": 9.3}, skipped]
    record.write_text(json.dumps({"command": "c", "train": train, "extract": extract}))
    text = docs.scale(tmp_path)
    assert "224 px: 77 images/s, 38 per CPU core" in text
    assert "one hour: 280,000 images" in text  # 76.8 x (3,600 - 9.3)
    assert "ray: skipped (Ray is not installed)" in text and "GPU: unmeasured" in text


def test_the_growing_figures_read_a_record_without_the_smaller_folder(tmp_path: Path):
    (tmp_path / "bench").mkdir()
    record = json.loads((ROOT / "bench" / "growing.json").read_text())
    record.pop("smaller_folder", None)
    record["peak_rss_mib_by_images"] = {"2000": 923}
    (tmp_path / "bench" / "growing.json").write_text(json.dumps(record))
    text = docs.growing(tmp_path)
    assert "smaller folder" not in text and "2,000 images: 923 MiB" in text
    assert f"| after adding {record['after_adding']['added']:,} |" in text
