"""Small image helpers: solid-colour PNGs for avatars and emoji, and image sizes for files."""

from __future__ import annotations

import hashlib
import mimetypes
import struct
import zlib
from functools import lru_cache


@lru_cache(maxsize=256)
def solid_png(seed: str, size: int) -> bytes:
    """A size x size PNG in a colour derived from seed (stable per user)."""
    digest = hashlib.sha256(seed.encode()).digest()
    pixel = bytes(digest[:3])
    row = b"\x00" + pixel * size
    raw = row * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, JPEG or WebP image, None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return int(width), int(height)
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return int(width & 0x3FFF), int(height & 0x3FFF)
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


# filetype and pretty_type as Slack names them, by extension.
_FILETYPES: dict[str, tuple[str, str]] = {
    "png": ("png", "PNG"), "jpg": ("jpg", "JPEG"), "jpeg": ("jpg", "JPEG"),
    "gif": ("gif", "GIF"), "webp": ("webp", "WebP"), "svg": ("svg", "SVG"),
    "pdf": ("pdf", "PDF"), "txt": ("text", "Plain Text"), "md": ("markdown", "Markdown (raw)"),
    "csv": ("csv", "CSV"), "json": ("json", "JSON"), "zip": ("zip", "Zip"),
    "doc": ("doc", "Word Document"), "docx": ("docx", "Word Document"),
    "xls": ("xls", "Excel Spreadsheet"), "xlsx": ("xlsx", "Excel Spreadsheet"),
    "mp3": ("mp3", "MP3"), "mp4": ("mp4", "MPEG 4 Video"), "ogg": ("ogg", "Ogg Vorbis"),
    "m4a": ("m4a", "MPEG 4 Audio"), "wav": ("wav", "WAV"), "mov": ("mov", "QuickTime Movie"),
    "ics": ("ics", "iCalendar"), "eml": ("email", "Email"), "html": ("html", "HTML"),
}


def file_kind(filename: str, mimetype: str | None) -> tuple[str, str, str]:
    """(mimetype, filetype, pretty_type) the way Slack reports them."""
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    guessed = mimetypes.guess_type(filename)[0]
    mime = mimetype or guessed or ("text/plain" if ext == "txt" else "application/octet-stream")
    filetype, pretty = _FILETYPES.get(ext, ("binary", "Binary"))
    if filetype == "binary" and mime.startswith("text/"):
        filetype, pretty = "text", "Plain Text"
    return mime, filetype, pretty
