"""``syncd report funnel --format html`` rendered by a real browser (headless Chromium).

The page must stand alone (no network: Chromium runs with the network cut off), show a
chart (the screenshot is not blank: many pixels are neither white nor near-white) and carry
the numbers (Chromium's DOM after rendering holds them).
"""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from syncd.report import Funnel, Row, render
from tests.system_deps import require_debian_binary

FUNNEL = Funnel(
    "source",
    date(2025, 3, 1),
    date(2025, 3, 31),
    (
        Row("ads_vk", 1200, 540, 130, 61, Decimal("731900.00")),
        Row("blog", 300, 75, 12, 5, Decimal("59500.50")),
        Row("<script>", 1, 0, 0, 0, Decimal("0.00")),  # outside text is escaped
    ),
)


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_debian_binary("chromium", "chromium")


def browse(chromium: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--proxy-server=http://127.0.0.1:9",  # no network
            "--proxy-bypass-list=<-loopback>", "--hide-scrollbars", *args, page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB/RGBA PNG (stdlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format {depth}/{colour}"
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(bytes(line))
        previous = bytes(line)
    return width, height, [bytes(r[i] for i in range(len(r)) if i % bpp < 3) for r in rows]


def coloured_share(rows: list[bytes]) -> float:
    """Share of pixels far from white (any channel below 200)."""
    total = coloured = 0
    for row in rows:
        for i in range(0, len(row), 3):
            total += 1
            coloured += min(row[i], row[i + 1], row[i + 2]) < 200
    return coloured / total


def test_the_page_stands_alone() -> None:
    html = render(FUNNEL, "html")
    assert "<svg" in html and "<table>" in html
    assert not re.search(r"<script|<link|@import|url\(|https?://(?!www\.w3\.org/2000/svg)", html)
    assert "&lt;script&gt;" in html


def test_chromium_renders_the_chart_and_the_numbers(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "funnel.html"
    page.write_text(render(FUNNEL, "html"), encoding="utf-8")
    shot = tmp_path / "funnel.png"
    browse(chromium, page, f"--screenshot={shot}", "--window-size=1000,900")
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 900)
    share = coloured_share(rows)
    assert share > 0.05, f"the screenshot is nearly blank ({share:.1%} coloured)"
    # the bars are where the chart is: the top third of the page holds colour
    assert coloured_share(rows[: height // 3]) > 0.05
    dom = browse(chromium, page, "--dump-dom").stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)).replace("\u202f", " ")
    for number in ("1 501", "615", "142", "66", "791 400.50", "731 900.00", "45.0%", "24.1%"):
        assert number in text, f"{number!r} not in the rendered page"
