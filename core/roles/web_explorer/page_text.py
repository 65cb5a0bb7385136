"""A page's readable text: HTML to lines of text with the stdlib parser, scripts and styles dropped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Whose content is never text a reader sees.
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object"})
# Tags that end a line of text.
_BLOCKS = frozenset(
    {
        "p", "div", "br", "li", "ul", "ol", "tr", "td", "th", "table", "section", "article", "header",
        "footer", "nav", "main", "aside", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr",
        "form", "dt", "dd", "figcaption", "title",
    }
)  # fmt: skip
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"})
_WHITESPACE = re.compile(r"\s+")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skipping: list[str] = []  # open skipped tags, innermost last
        self._in_title = False
        self._pre = 0  # open <pre> tags: their line breaks are kept

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self._pre += 1
        if tag == "title" and not self._skipping and not self.title_parts:  # not an <svg>'s <title>
            self._in_title = True
        elif tag in _SKIPPED and tag not in _VOID:
            self._skipping.append(tag)
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag == "title":
            self._in_title = False
        elif tag in self._skipping:
            while self._skipping and self._skipping.pop() != tag:
                pass
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._skipping:  # outside <pre>, a line break in the source is a space on the page
            self.parts.append(data if self._pre else _WHITESPACE.sub(" ", data))


def html_text(html: str) -> tuple[str, str]:
    """``(title, text)`` of an HTML document: the visible text, one line per block, blank runs folded."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title_parts).split())
    return title, tidy("".join(parser.parts))


def tidy(text: str) -> str:
    """Spaces folded within lines, blank lines dropped."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
