"""Reading the Files panel the way a user does: its table (``ui.outputs.listing_markdown``) names each
file once, and a name offered for download is a Markdown link to it."""

from __future__ import annotations

import re

DOWNLOAD_LINK = re.compile(r"\[((?:\\.|[^\]\\])+)\]\((\S+) \"(?:\\.|[^\"\\])*\"\)")


def panel_downloads(table: str) -> dict[str, str]:
    """Each linked file name of the panel's table and its download URL."""
    return {re.sub(r"\\(.)", r"\1", name): url for name, url in DOWNLOAD_LINK.findall(table)}
