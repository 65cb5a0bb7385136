"""WebExplorer: reads the page whose URL the Planner sends, and reports its text.

TaskWeaver's drives a browser and looks at screenshots with a vision model; Weaver's fetches the
page over HTTP (``fetch.py``: public addresses only, checked after DNS, each redirect too) and
hands its text back (``page_text.py``). Off unless ``web_explorer.enabled`` is true.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from core.errors import ConfigError
from core.memory import Post
from core.roles.context import RoundContext
from core.roles.ext import ExtRole, section_setting
from core.roles.web_explorer.fetch import FetchLimits, FetchRefused, fetch_page
from core.roles.web_explorer.page_text import html_text, tidy
from core.roles.web_permission import require_enabled

log = logging.getLogger("weaver.roles")
# The first thing that looks like a URL: a scheme, "://", then up to a space or a closing mark.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`)\]]+")


def limits_from(settings: dict[str, Any]) -> FetchLimits:
    """The fetch limits from the ``web_explorer.*`` section (checked at start, read again per role)."""
    hosts = settings.get("allowed_hosts", [])
    if isinstance(hosts, str):  # a comma-separated text, as TaskWeaver writes lists
        hosts = hosts.split(",")
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError("web_explorer.allowed_hosts: expected a list of host names")
    return FetchLimits(
        allowed_hosts=frozenset(h.strip().lower().rstrip(".") for h in hosts if h.strip()),
        max_bytes=int(_positive(settings, "max_page_kb", 1024) * 1024),
        timeout_s=float(_positive(settings, "timeout", 10.0)),
        max_redirects=_at_least_zero(settings, "max_redirects", 5),
    )


def _at_least_zero(settings: dict[str, Any], key: str, default: int) -> int:
    value = int(section_setting("web_explorer", settings, key, default))
    if value < 0:
        raise ConfigError(f"web_explorer.{key}: must be 0 or more, got {value!r}")
    return value


def _positive(settings: dict[str, Any], key: str, default: float) -> float:
    value = section_setting("web_explorer", settings, key, default)
    if value <= 0:
        raise ConfigError(f"web_explorer.{key}: must be more than 0, got {value!r}")
    return float(value)


class WebExplorer(ExtRole):
    @classmethod
    def check_startup(cls, name: str, settings: dict[str, Any]) -> None:
        require_enabled(name, settings, "fetches web pages")
        limits_from(settings)
        if section_setting(name, settings, "max_text_chars", 8000) < 1:
            raise ConfigError("web_explorer.max_text_chars: must be at least 1")

    def reply(self, ctx: RoundContext) -> Post:
        incoming = ctx.last_post
        proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
        proxy.update_send_to(str(incoming.send_from))
        proxy.update_message(self.read(incoming.message), is_end=True)
        return proxy.end()

    def read(self, message: str) -> str:
        """The page's title and text, or why it was not read."""
        found = _URL.search(message)
        if found is None:
            return "WebExplorer was sent no URL: send the full address of one page (http:// or https://)."
        url = found.group(0).rstrip(".,;:!?")
        max_chars = int(self.setting("max_text_chars", 8000))
        try:
            page = fetch_page(url, limits_from(self.settings))
        except FetchRefused as exc:
            log.info("web_explorer did not read %s: %s", url, exc)
            return f"WebExplorer did not read {url}: {exc}."
        title, text = html_text(page.text) if page.content_type == "text/html" else ("", tidy(page.text))
        cut = len(text) > max_chars
        text = text[:max_chars]
        lines = [f"WebExplorer read {page.url}" + (f' ("{title}")' if title else "") + ":", "", text or "(no text)"]
        if cut:
            lines.append(f"\n(The text was cut at {max_chars} characters: web_explorer.max_text_chars.)")
        return "\n".join(lines)
