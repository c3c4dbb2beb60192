"""Memory of the try-it server under worst-case uploads: ``python -m bench.serve_memory``.

Starts ``python -m app.serve`` on 127.0.0.1 (``--models``, default ``models/`` after
``dvc repro``), classifies one small image (its idle level), then sends ``--uploads``
concurrent uploads of the worst images an upload cap lets through: a 7,999 x 7,999 16-bit
grayscale PNG of about 125 kB and its JPEG, WebP and 16-bit TIFF cousins (each under every
size cap, each just under the pixel limit). It records the server's peak resident memory
during the burst (``VmHWM`` after resetting it) and its resident memory once the burst is
answered, with every answer's status, in ``bench/serve_memory.json``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import platform
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from stages.common import paths

SIDE = 7999  # just under the 64-megapixel limit
OUT = Path("bench/serve_memory.json")
GOAL_PEAK_MB = 1500
KINDS = ("png16", "jpeg", "webp", "tiff16")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(side: int = SIDE) -> bytes:
    """A black ``side`` x ``side`` 16-bit grayscale PNG, compressed row by row (small, fast)."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)  # filter byte, then the row's 16-bit samples
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def worst_case(kind: str, side: int = SIDE) -> bytes:
    """One worst-case upload: ``png16``, ``jpeg``, ``webp`` or ``tiff16``."""
    if kind == "png16":
        return png16(side)
    buffer = io.BytesIO()
    if kind == "jpeg":
        Image.new("L", (side, side), 255).save(buffer, "JPEG", quality=50)
    elif kind == "webp":
        Image.new("RGB", (side, side), (255, 255, 255)).save(
            buffer, "WEBP", lossless=True, method=0
        )
    elif kind == "tiff16":
        Image.new("I;16", (side, side), 0).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {KINDS}")
    return buffer.getvalue()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Reset the process's peak resident memory (VmHWM) to its current level, where allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def post(host: str, port: int, body: bytes, name: str, timeout: float = 300) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body=body, headers={"X-Filename": name})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def burst(host: str, port: int, files: list[tuple[str, bytes]]) -> list[dict]:
    """Send every file at once (threads released together); each one's status and message."""
    start = threading.Barrier(len(files))

    def one(item: tuple[str, bytes]) -> dict:
        name, body = item
        start.wait(timeout=60)
        began = time.monotonic()
        status, answer = post(host, port, body, name)
        return {
            "file": name,
            "bytes": len(body),
            "status": status,
            "seconds": round(time.monotonic() - began, 2),
            "error": answer.get("error"),
        }

    with ThreadPoolExecutor(len(files)) as pool:
        return list(pool.map(one, files))


def measure(server, uploads: int, side: int = SIDE) -> dict[str, Any]:
    """Idle, peak and after resident memory (MB) of a running ``tools.try_page.Server``."""
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    pid = server.process.pid
    small = io.BytesIO()
    Image.new("L", (64, 64), 255).save(small, "PNG")
    assert post(url.hostname, url.port, small.getvalue(), "small.png")[0] == 200
    time.sleep(0.5)
    idle = status_kb(pid, "VmRSS")
    peak_reset = reset_peak(pid)
    cousins = {kind: worst_case(kind, side) for kind in KINDS}
    files = [
        (f"{KINDS[i % len(KINDS)]}_{i}", cousins[KINDS[i % len(KINDS)]]) for i in range(uploads)
    ]
    answers = burst(url.hostname, url.port, files)
    peak = status_kb(pid, "VmHWM")
    time.sleep(1.0)
    after = status_kb(pid, "VmRSS")
    return {
        "idle_rss_mb": round(idle / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "after_rss_mb": round(after / 1024, 1),
        "peak_is_of_the_burst": peak_reset,
        "answers": answers,
    }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    import PIL

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libc": " ".join(platform.libc_ver()),
    }


def main(argv: list[str] | None = None) -> int:
    from tools.try_page import Server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--uploads", type=int, default=8, help="concurrent uploads (default 8)")
    parser.add_argument("--side", type=int, default=SIDE, help=f"pixels a side (default {SIDE})")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    server = Server(Path.cwd(), ["--models", str(args.models)])
    try:
        result = measure(server, args.uploads, args.side)
    finally:
        server.stop()
    record = {
        "command": "python -m bench.serve_memory "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "side": args.side,
        "uploads": args.uploads,
        "goal_peak_rss_mb": GOAL_PEAK_MB,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    statuses = [a["status"] for a in result["answers"]]
    print(
        f"serve_memory: idle {result['idle_rss_mb']} MB, peak {result['peak_rss_mb']} MB, "
        f"after {result['after_rss_mb']} MB; answers {statuses}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
