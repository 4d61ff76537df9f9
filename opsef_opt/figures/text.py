"""Text on figures: Pillow's bundled font, pipeline-aware wrapping, lines in a box."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

from PIL import ImageDraw, ImageFont

__all__ = ["BACKGROUND_RGB", "TEXT_RGB", "font", "wrap", "draw_lines", "text_width"]

#: page background of every sheet (white, like a printed figure) and its text colour
BACKGROUND_RGB = (255, 255, 255)
TEXT_RGB = (25, 25, 25)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (needs Pillow >= 10.1 with FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # old Pillow / no FreeType: fixed bitmap font
        return ImageFont.load_default()


def text_width(text: str, font) -> float:
    return font.getlength(text)


# lines break after spaces, commas, semicolons and pipes; a word wider than a line
# breaks after one of _SOFT (e.g. "median(" / "size=3)") or, failing that, anywhere
_TOKEN = re.compile(r"[^\s,;|]*[\s,;|]*")
_SOFT = "(_=.-+/:"


def _greedy(text: str, font, width: float) -> list[str]:
    tokens = [t for t in _TOKEN.findall(text) if t]
    lines: list[str] = []
    line = ""
    for token in tokens:
        if text_width((line + token).rstrip(), font) <= width:
            line += token
            continue
        if line.strip():
            lines.append(line.rstrip())
        line = token.lstrip()
        while text_width(line.rstrip(), font) > width and len(line) > 1:  # one token wider than a line
            cut = max(1, _fit_chars(line, font, width))
            lines.append(line[:cut])
            line = line[cut:]
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _fit_chars(text: str, font, width: float) -> int:
    """How many leading characters of ``text`` to put on a line ``width`` px wide."""
    n = len(text)
    while n > 1 and text_width(text[:n], font) > width:
        n -= 1
    soft = max(text.rfind(ch, 0, n) for ch in _SOFT) + 1
    return soft if soft > n // 3 else n


def _ellipsize(text: str, font, width: float) -> str:
    if text_width(text, font) <= width:
        return text
    while text and text_width(text + "...", font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap(text: str, font, width: float, max_lines: int) -> list[str]:
    """Lines of ``text`` no wider than ``width`` px, at most ``max_lines``.

    Pipeline labels put one step per line where that fits
    (``"filter=median(size=3) | background=tophat(radius=15)"`` becomes
    ``filter=median(size=3) |`` / ``background=tophat(radius=15)``); otherwise
    lines break after spaces, commas, ``|`` or ``(``, and inside a word only
    when it alone is too wide.  Text that still does not fit ends in ``...``.
    """
    if max_lines <= 0 or not text:
        return []
    steps = [s.strip() for s in text.split(" | ")]
    lines: list[str] = []
    for i, step in enumerate(steps):
        lines += _greedy(step + (" |" if i < len(steps) - 1 else ""), font, width)
    if len(lines) > max_lines:
        lines = _greedy(text, font, width)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1] + " ...", font, width)
    return lines


def draw_lines(draw: ImageDraw.ImageDraw, lines: Sequence[str], font, box: tuple[int, int, int, int],
                line_px: int, fill, align: str = "left", valign: str = "top") -> None:
    y0, x0, y1, x1 = box
    total = len(lines) * line_px
    y = {"top": y0, "middle": y0 + (y1 - y0 - total) // 2, "bottom": y1 - total}[valign]
    dy = (line_px - getattr(font, "size", line_px)) // 2  # centre the glyphs on their line
    for line in lines:
        x = x0 if align == "left" else x0 + ((x1 - x0) - text_width(line, font)) / 2
        draw.text((x, y + dy), line, font=font, fill=fill)
        y += line_px
