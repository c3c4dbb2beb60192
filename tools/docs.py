"""Every figure in README.md and docs/*.md, generated from the JSON records.

    python -m tools.docs           # rewrite the generated regions in place (``make docs``)
    python -m tools.docs --check   # exit 1, naming each page, when a page is not up to date

A page marks what this command writes with a pair of HTML comments, which Markdown hides:

    <!-- generated:results -->
    (anything here is replaced)
    <!-- /generated -->

The name picks a function in ``GENERATORS``; each reads records only (``metrics/*.json``,
``bench/*.json``, ``params.yaml``), never runs anything, so the command takes a second and
``tests/test_docs.py`` can fail whenever a committed page differs from what it generates. A region
written on one line (``<!-- generated:NAME -->…<!-- /generated -->``) gets the figure inline.
To add a figure: write a function ``(root) -> str`` below, register it, put the markers in a page,
run ``make docs``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REGION = re.compile(r"(?<!`)<!-- generated:([\w-]+) -->(.*?)<!-- /generated -->", re.DOTALL)
NONE = "\u2013"  # an en dash: no figure in this cell
BASELINE_NAMES = {
    "logreg_features": "logistic regression on the same cached features",
    "svm_rbf_pixels": "RBF SVM on raw pixels",
    "logreg_pixels": "logistic regression on raw pixels",
}


def pages(root: Path = ROOT) -> list[Path]:
    """The pages this command keeps: README.md, CHANGELOG.md and every docs/*.md."""
    found = [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in found if p.exists()]


def read(root: Path, rel: str) -> Any:
    return json.loads((root / rel).read_text(encoding="utf-8"))


def pct(value: float) -> str:
    return f"{value:.2%}".replace("%", " %")


def p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.2f}"


def verdict(p_mid: float, head_more: bool) -> str:
    if p_mid >= 0.05:
        return "indistinguishable"
    return "head better" if head_more else "baseline better"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results(root: Path) -> str:
    """The default run (metrics/*.json): the head and each baseline on the same test images."""
    metrics = read(root, "metrics/metrics.json")
    baselines = {**read(root, "metrics/baselines_pixels.json")}
    baselines |= read(root, "metrics/baselines_features.json")
    test = metrics["test"]
    rows = [
        [
            "**head** (defaults)",
            f"**{pct(test['accuracy'])}** ({test['right']}/{test['n']}) "
            f"[{pct(test['accuracy_low'])}, {pct(test['accuracy_high'])}]",
            NONE,
            NONE,
            NONE,
        ]
    ]
    for name, label in BASELINE_NAMES.items():
        paired = metrics["paired"].get(name)
        if name not in baselines or paired is None:
            continue
        head, base = paired["head_only_right"], paired["baseline_only_right"]
        rows.append(
            [
                label,
                pct(baselines[name]["test_accuracy"]),
                f"{head} / {base}",
                p_value(paired["p_mid"]),
                verdict(paired["p_mid"], head > base),
            ]
        )
    header = [
        "model",
        "test accuracy [95 % interval]",
        "head right / baseline right where only one is",
        "McNemar mid-p",
        "verdict",
    ]
    note = (
        f"\n\n{metrics['images']['test']:,} test images, {metrics['images']['train']:,} training "
        f"images (+{metrics['images']['train_augmented']:,} augmented copies for the head); "
        f"test log-loss {test['log_loss']:.3f}, expected calibration error {test['ece']:.3f}."
    )
    return table(header, rows) + note


def seeds(rel: str) -> Callable[[Path], str]:
    """Test accuracy over split seeds (bench/accuracy*.json, ``python -m bench.accuracy``)."""

    def generate(root: Path) -> str:
        record = read(root, rel)
        rows = []
        for config, row in record["rows"].items():
            if config.startswith("baseline"):
                continue
            errors = ", ".join(str(r["test_errors"]) for r in record["runs"][config])
            rows.append([f"**head, {config}**", spread(row["test"]), errors, NONE, NONE])
        paired = record["paired"].get("defaults", {})
        for name, label in BASELINE_NAMES.items():
            row = record["rows"].get(f"baseline {name} (original images)")
            if row is None:
                continue
            p = paired.get(name, {})
            counts = f"{p.get('head_only_right', NONE)} / {p.get('baseline_only_right', NONE)}"
            significant = f"{p.get('significant', 0)} of {p.get('runs', 0)}"
            rows.append([label, spread(row["test"]), NONE, counts, significant])
        header = [
            "model",
            "test accuracy, mean ± std (min to max)",
            "test errors per split",
            "head right / baseline right where only one is (summed)",
            "splits with mid-p < 0.05",
        ]
        note = (
            f"\n\nSplit seeds {', '.join(map(str, record['seeds']))}, head seeds "
            f"{', '.join(map(str, record['head_seeds']))}; data: `{' '.join(record['data'])}`."
        )
        return table(header, rows) + note

    return generate


def spread(summary: dict[str, float]) -> str:
    return (
        f"{pct(summary['mean'])} ± {pct(summary['std'])} "
        f"({pct(summary['min'])} to {pct(summary['max'])})"
    )


def selection(root: Path) -> str:
    """Every key of bench/selection.json: each value's val errors and mean val log-loss."""
    record = read(root, "bench/selection.json")
    rows = []
    for key, entry in record.items():
        for value, tried in entry["tried"].items():
            mark = "**chosen**" if value == entry["chosen"] else ""
            rows.append(
                [
                    f"`{key}`",
                    f"`{value}`",
                    str(tried["val_errors"]),
                    f"{tried['mean_val_log_loss']:.4f}",
                    f"{' + '.join(entry['data'])}, {len(tried['runs'])} runs",
                    mark,
                ]
            )
    header = ["key", "value", "val errors", "mean val log-loss", "data, runs", ""]
    return table(header, rows)


def photos(root: Path) -> str:
    """Photos against scans of the same digits (bench/photos.json, ``python -m bench.photos``)."""
    record = read(root, "bench/photos.json")
    rows = [
        [
            r["data"],
            r["preparation"],
            pct(r["test_accuracy"]),
            pct(r["val_accuracy"]),
            str(r["test_images"]),
        ]
        for r in record["runs"]
    ]
    header = ["data", "preparation", "test accuracy", "val accuracy", "test images"]
    return table(header, rows)


def export(root: Path) -> str:
    """metrics/export.json: each exported file against the head, and its size."""
    record = read(root, "metrics/export.json")
    files = {
        "keras": "classifier.keras",
        "saved_model": "export/saved_model",
        "tflite": "export/classifier.tflite",
    }
    rows = [
        [
            f"`models/{path}`",
            f"{record[name]['top1_agreement']:.2%}",
            f"{record[name]['max_abs_diff']:.2g}",
            f"{record['size_bytes'][path] / 1e6:.1f} MB",
        ]
        for name, path in files.items()
    ]
    header = ["file", "top-1 equal to the head", "largest probability difference", "size"]
    return (
        table(header, rows)
        + f"\n\nOn {record['test_images']} test images, tolerance {record['tolerance']:g}."
    )


def bench(root: Path) -> str:
    """The latest ``python -m bench`` table (bench/results.json → ``table``)."""
    record = read(root, "bench/results.json")
    m = record["machine"]
    bf16 = any(flag in m.get("cpu_flags", []) for flag in ("avx512_bf16", "amx_bf16"))
    line = (
        f"Measured on {m['cores']} cores, {m['memory_gib']} GiB, {m['gpus']} GPU, bfloat16 units: "
        f"{'yes' if bf16 else 'no'}; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"Python {m['python']}; {record.get('bench_s', 0):.0f} s in all."
    )
    rows = [row for row in record["table"] if set(row) != {"---"}]  # an old record's stray rule
    return line + "\n\n" + table(["figure", "value", "notes"], rows)


PARAM_LINE = re.compile(r"^  (\w+):\s*(.*?)\s*(?:#\s*(.*))?$")


def params(root: Path) -> str:
    """params.yaml as a table: every key, its value and its comment (the file is the truth)."""
    rows, section = [], ""
    for line in (root / "params.yaml").read_text(encoding="utf-8").splitlines():
        if re.match(r"^\w+:\s*$", line):
            section = line.rstrip(":").strip()
        elif match := PARAM_LINE.match(line):
            key, value, comment = match.groups()
            rows.append([f"`{section}.{key}`", f"`{value}`", (comment or "").replace("|", "/")])
    return table(["key", "default", "meaning"], rows)


def two_digits(n: float) -> str:
    """A count rounded to 2 significant digits: 1,234,567 -> "1,200,000"."""
    if n <= 0:
        return "0"
    return f"{round(n, 2 - len(str(int(n)))):,.0f}"


def or_dash(value: Any, form: str = "{:,.0f}") -> str:
    return NONE if value is None else form.format(value)


COST_WAITS = {"one hour": 3600, "one night (8 h)": 8 * 3600}  # the waits the cost model states


def scale(root: Path) -> str:
    """bench/scale.json (``python -m bench.scale``): train's memory and epoch time by vectors,
    extract's steady rate and start-up per engine and node count, and the cost model's figures:
    images/s per CPU core, the largest folder one machine extracts within each of COST_WAITS."""
    record = read(root, "bench/scale.json")
    train = [
        [
            f"{r['vectors']:,}",
            f"{r['feature_bytes'] / 1e9:.3g} GB",
            f"{r['peak_rss_bytes'] / 2**20:,.0f} MiB",
            or_dash(r.get("epoch_s"), "{:.2f} s"),
        ]
        for r in record["train"]
    ]
    done = [r for r in record["extract"] if "skipped" not in r]
    cores = record.get("machine", {}).get("cores") or record.get("machine", {}).get("cpus")
    rows, notes = [], []
    for r in done:
        cpus = r.get("cpus") or (r["nodes"] * r["cpus_per_node"] if "cpus_per_node" in r else None)
        per_cpu = r.get("images_per_s_per_cpu") or (cpus and r["images_per_s"] / cpus)
        calls = [r.get("first_call_s"), *r["call_s"]] if "call_s" in r else []
        rows.append(
            [
                r["engine"],
                or_dash(r.get("image_size"), "{} px"),
                str(r["nodes"]),
                or_dash(cpus, "{}"),
                f"{r['images_per_s']:,.0f}",
                or_dash(per_cpu),
                or_dash(r.get("startup_s"), "{:.1f} s"),
                " / ".join(or_dash(t, "{:.1f}") for t in calls)
                + " s ({:,}, {:,})".format(*r["images"])
                if calls
                else NONE,
                {True: "yes", False: "**no**"}.get(r.get("same_features"), NONE),
            ]
        )
        if r["engine"] != "local":
            continue
        size = f"{r['image_size']} px" if "image_size" in r else "image size not recorded"
        covered = ", ".join(
            f"{wait}: {two_digits(r['images_per_s'] * (t - r.get('startup_s', 0.0)))} images"
            for wait, t in COST_WAITS.items()
        )
        notes.append(
            f"- One machine ({cores} cores), local engine, {size}: {r['images_per_s']:,.0f} "
            f"images/s, {r['images_per_s'] / (cpus or cores or 1):,.0f} per CPU core; the largest "
            f"folder it extracts within {covered}."
        )
    ray = [r for r in done if r["engine"] == "ray" and "images_per_s_per_cpu" in r]
    if ray:
        nodes = [f"{r['nodes']} node{'s' if r['nodes'] > 1 else ''}" for r in ray]
        per = ", ".join(
            f"{r['images_per_s_per_cpu']:,.0f} ({n})" for r, n in zip(ray, nodes, strict=True)
        )
        startup = ", ".join(
            f"{r['startup_s']:.1f} s ({n})" for r, n in zip(ray, nodes, strict=True)
        )
        notes.append(f"- Ray: {per} images/s per CPU slot; start-up a call {startup}.")
    notes += [
        f"- {r['engine']}: skipped ({r['skipped']})." for r in record["extract"] if "skipped" in r
    ]
    notes.append(f"- GPU: {record.get('gpu', 'unmeasured')}.")
    load = record.get("machine", {}).get("load_average_start")
    load = "" if load is None else f", load average {load} at its start"
    header = ["engine", "image size", "nodes", "CPUs", "images/s, steady", "per CPU"]
    header += ["start-up a call", "calls: cold / n1 / n2 (n1, n2 images)", "features = local"]
    return (
        "Train, synthetic 1,024-d vectors:\n\n"
        + table(["vectors", "features", "peak RSS", "epoch"], train)
        + "\n\nExtract, the same images for every engine:\n\n"
        + table(header, rows)
        + "\n\n"
        + "\n".join(notes)
        + f"\n\nRecord: `{record['command']}`{load}."
    )


def scale_summary(root: Path) -> str:
    """README's one-line cost figure (bench/scale.json): the local engine at its largest image size
    per machine and per CPU core, what one machine extracts in a night, and the GPU's status."""
    record = read(root, "bench/scale.json")
    local = [r for r in record["extract"] if r["engine"] == "local" and "skipped" not in r]
    if not local:
        return "*(no extract rows in bench/scale.json yet: `python -m bench.scale`)*"
    r = max(local, key=lambda row: row.get("image_size", 0))
    cpus = r.get("cpus") or record.get("machine", {}).get("cores") or 1
    night = two_digits(r["images_per_s"] * COST_WAITS["one night (8 h)"])
    return (
        f"at {r.get('image_size', '?')} px the local engine extracts {r['images_per_s']:,.0f} "
        f"images/s on {cpus} CPU cores ({r['images_per_s'] / cpus:,.0f} per core), about {night} "
        f"images in an 8-hour night; GPU: {record.get('gpu', 'unmeasured')}."
    )


def growing(root: Path) -> str:
    """bench/growing.json (``python -m bench.growing``): split+augment+extract from scratch vs
    after adding images, what each computed, and peak memory by folder size."""
    record = read(root, "bench/growing.json")
    runs = [("from scratch", record["from_scratch"])]
    runs += [("after adding", r) for r in record.get("after_adding_runs", [record["after_adding"]])]
    rows = []
    for name, r in runs:
        done = r.get("computed", {})
        label = f"after adding {r['added']:,}" if "added" in r else name
        rows.append(
            [
                label,
                f"{r['images']:,}",
                f"{r['seconds']:.1f} s",
                " / ".join(f"{done.get(k, 0):,}" for k in ("split", "augment", "extract")),
                f"{r['peak_rss_mib']:,} MiB",
            ]
        )
    header = ["run", "images", "time", "computed: split / augment / extract", "peak RSS"]
    ratio, goal = record["after_over_from_scratch"], record["goal_after_over_from_scratch"]
    met = "met" if ratio <= goal else "**not met**"
    by_size = ", ".join(
        f"{int(n):,} images: {mib:,} MiB"
        for n, mib in sorted(
            record.get("peak_rss_mib_by_images", {}).items(), key=lambda i: int(i[0])
        )
    )
    return (
        table(header, rows)
        + f"\n\nAfter adding (the median run): {pct(ratio)} of the time from scratch "
        f"(goal: at most {pct(goal)}, {met}); `dvc add` took {record['after_adding'].get('dvc_add_seconds', 0):.1f} s more. "
        f"Peak RSS by folder size: {by_size}. Record: `{record['command']}`."
    )


GENERATORS: dict[str, Callable[[Path], str]] = {
    "results": results,
    "seeds-mnist": seeds("bench/accuracy_mnist.json"),
    "seeds-digits": seeds("bench/accuracy.json"),
    "selection": selection,
    "photos": photos,
    "export": export,
    "bench": bench,
    "params": params,
    "scale": scale,
    "scale-summary": scale_summary,
    "growing": growing,
}


def render(text: str, root: Path = ROOT) -> str:
    """``text`` with every generated region filled from the records."""

    def fill(match: re.Match) -> str:
        name, body = match.group(1), match.group(2)
        if name not in GENERATORS:
            raise KeyError(f"unknown generated region '{name}' (known: {sorted(GENERATORS)})")
        figure = GENERATORS[name](root)
        inner = f"\n{figure}\n" if "\n" in body else figure
        return f"<!-- generated:{name} -->{inner}<!-- /generated -->"

    return REGION.sub(fill, text)


def stale_pages(root: Path = ROOT, write: bool = False) -> list[Path]:
    """The pages whose generated regions differ from the records (rewritten with ``write``)."""
    stale = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        fresh = render(text, root)
        if fresh != text:
            stale.append(page)
            if write:
                page.write_text(fresh, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.docs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="only say which pages are stale")
    args = parser.parse_args(argv)
    stale = stale_pages(write=not args.check)
    for page in stale:
        verb = "is not up to date" if args.check else "rewritten"
        print(f"{page.relative_to(ROOT)}: {verb}")
    if args.check and stale:
        sys.exit("run `make docs` (python -m tools.docs) and commit the pages")


if __name__ == "__main__":
    main()
