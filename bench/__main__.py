"""``python -m bench [NAME ...]``: every registered benchmark, or the ones named.

Each module ``bench/<name>.py`` has a ``main(argv)`` that writes its record ``bench/<name>.json``
(``bench.run``: ``bench/results.json``); here each runs as ``main([])``, with its defaults
(``python -m bench.<name> --help`` lists its options). A new benchmark is one line below.
"""

from __future__ import annotations

import argparse
import importlib

SECTIONS = [
    "run",  # speed: import, extract, dvc repro, the head-only iteration, the head's epoch
    "growing",  # a folder that grows: +1 % of images vs from scratch, peak memory by folder size
    "precision",  # the head's bytes across threads, oneDNN and ISA settings; float32 vs bfloat16
    "serve_memory",  # the try-it server's peak memory under concurrent worst-case uploads
    "scale",  # train's memory and epoch time by feature vectors; extract local vs Ray nodes
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"some of {SECTIONS} (default: all)")
    names = parser.parse_args(argv).names or SECTIONS
    if unknown := sorted(set(names) - set(SECTIONS)):
        parser.error(f"no such benchmark: {unknown} (registered: {SECTIONS})")
    for name in names:
        print(f"== bench.{name}", flush=True)
        importlib.import_module(f"bench.{name}").main([])


if __name__ == "__main__":
    main()
