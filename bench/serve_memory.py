"""Memory of the try-it server under worst-case uploads: ``python -m bench.serve_memory``.

Starts the try-it server on 127.0.0.1 (``--models``, default ``models/`` after ``dvc repro``),
classifies one small image (its idle level), then sends ``--uploads`` concurrent uploads of the
worst images an upload cap lets through: a 7,999 x 7,999 16-bit grayscale PNG of about 125 kB
and its JPEG, WebP and 16-bit TIFF cousins (each under every size cap, each just under the pixel
limit). Records the server's peak resident memory during the burst (``VmHWM`` after resetting
it), its resident memory once the burst is answered and every answer, in
``bench/serve_memory.json``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from bench.common import ROOT, write_record
from stages.common import paths

SIDE = 7999  # just under the 64-megapixel limit
GOAL_PEAK_MB = 1500
KINDS = ("png16", "jpeg", "webp", "tiff16")


def png16(side: int = SIDE) -> bytes:
    """A black ``side`` x ``side`` 16-bit grayscale PNG, compressed row by row (small, fast)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)  # filter byte, then the row's 16-bit samples
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def worst_case(kind: str, side: int = SIDE) -> bytes:
    """One worst-case upload: ``png16``, ``jpeg``, ``webp`` or ``tiff16``."""
    if kind == "png16":
        return png16(side)
    buffer = io.BytesIO()
    if kind == "jpeg":
        Image.new("L", (side, side), 255).save(buffer, "JPEG", quality=50)
    elif kind == "webp":
        Image.new("RGB", (side, side), "white").save(buffer, "WEBP", lossless=True, method=0)
    else:
        Image.new("I;16", (side, side)).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def status_mb(pid: int, field: str) -> float:
    """One ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status``, in MB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return round(int(next(x for x in lines if x.startswith(field + ":")).split()[1]) / 1024, 1)


def post(url: str, body: bytes, name: str) -> dict[str, Any]:
    """One ``POST /predict``: the file, its size, the status, the seconds and the error."""
    parts, began = urlsplit(url), time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        conn.request("POST", "/predict", body=body, headers={"X-Filename": name})
        response = conn.getresponse()
        answer = json.loads(response.read() or b"{}")
    finally:
        conn.close()
    seconds = round(time.monotonic() - began, 2)
    return {
        "file": name,
        "bytes": len(body),
        "status": response.status,
        "seconds": seconds,
        "error": answer.get("error"),
    }


def measure(server: Any, uploads: int, side: int = SIDE) -> dict[str, Any]:
    """Idle, peak and after resident memory (MB) of a running ``tools.try_page.Server``, and each
    answer to ``uploads`` worst-case uploads sent at once (threads released together)."""
    pid, small = server.process.pid, io.BytesIO()
    Image.new("L", (64, 64), 255).save(small, "PNG")
    assert post(server.url, small.getvalue(), "small.png")["status"] == 200
    time.sleep(0.5)
    idle = status_mb(pid, "VmRSS")
    try:  # reset the peak (VmHWM) to the current level, where allowed
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    cousins = {kind: worst_case(kind, side) for kind in KINDS}
    start = threading.Barrier(uploads)

    def one(i: int) -> dict[str, Any]:
        start.wait(timeout=60)
        return post(server.url, cousins[KINDS[i % 4]], f"{KINDS[i % 4]}_{i}")

    with ThreadPoolExecutor(uploads) as pool:
        answers = list(pool.map(one, range(uploads)))
    peak = status_mb(pid, "VmHWM")
    time.sleep(1.0)
    return {
        "idle_rss_mb": idle,
        "peak_rss_mb": peak,
        "after_rss_mb": status_mb(pid, "VmRSS"),
        "peak_is_of_the_burst": peak_reset,
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> None:
    from tools.try_page import Server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--uploads", type=int, default=8, help="concurrent uploads (default 8)")
    parser.add_argument("--side", type=int, default=SIDE, help=f"pixels a side (default {SIDE})")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "serve_memory.json")
    args = parser.parse_args(argv)
    server = Server(Path.cwd(), ["--models", str(args.models)])
    try:
        result = measure(server, args.uploads, args.side)
    finally:
        server.stop()
    print({k: v for k, v in result.items() if k.endswith("_mb")})
    record = {"side": args.side, "uploads": args.uploads, "goal_peak_rss_mb": GOAL_PEAK_MB}
    write_record(args.out, record | result, "serve_memory", argv)


if __name__ == "__main__":
    main()
