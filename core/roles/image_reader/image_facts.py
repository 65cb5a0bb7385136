"""What an image file is, from its bytes alone: PNG, JPEG, GIF or WEBP, and its size in pixels.

A name says nothing (``chart.png`` may be anything user code wrote), so the format is told by the
file's signature and the dimensions by its header, with no image library and nothing decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
# JPEG start-of-frame markers (their header holds the size); C4, C8 and CC are other segments.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageFacts:
    """An image's format (``PNG``...), media type, size in bytes and, when its header says, pixels."""

    format: str
    mime: str
    size: int
    width: int | None
    height: int | None

    def describe(self) -> str:
        pixels = f"{self.width} x {self.height} pixels" if self.width and self.height else "dimensions unknown"
        return f"a {self.format} image, {pixels}, {self.size:,} bytes"


def sniff_format(data: bytes) -> str | None:
    """``PNG``, ``JPEG``, ``GIF`` or ``WEBP`` by the file's signature; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def image_facts(data: bytes) -> ImageFacts | None:
    """The facts of an image in ``data``; None when it is not one of the four formats."""
    kind = sniff_format(data)
    if kind is None:
        return None
    width, height = _dimensions(kind, data) or (None, None)
    return ImageFacts(kind, MIME_TYPES[kind], len(data), width, height)


def _dimensions(kind: str, data: bytes) -> tuple[int, int] | None:
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if kind == "GIF":
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if kind == "WEBP":
            return _webp(data)
        if kind == "JPEG":
            return _jpeg(data)
    except struct.error:  # a header cut short: the format is known, the size is not
        return None
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Walk the segments to the first start-of-frame, whose header holds height then width."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None
