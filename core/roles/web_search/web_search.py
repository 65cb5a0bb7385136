"""WebSearch: asks a search engine the Planner's queries and reports titles, URLs and snippets.

As TaskWeaver's: the message is the query, several separated by "|", results deduplicated by URL,
``web_search.result_count`` per query (3). TaskWeaver then loads every result page and picks
passages with local embeddings; Weaver leaves reading pages to WebExplorer. Off unless
``web_search.enabled`` is true; the engine is ``web_search.api_provider`` (``providers.py``).
"""

from __future__ import annotations

from typing import Any

from core.memory import Post
from core.roles.context import RoundContext
from core.roles.ext import ExtRole, section_setting
from core.roles.web_permission import require_enabled
from core.roles.web_search.providers import Result, SearchFailed, SearchSettings, check_settings, default_base, search

MAX_QUERIES = 5  # of one message; more are dropped with a note


def settings_from(settings: dict[str, Any]) -> SearchSettings:
    """The ``web_search.*`` section, with TaskWeaver's provider-specific key names accepted."""

    def get(key: str, default: Any) -> Any:
        return section_setting("web_search", settings, key, default)

    provider = get("api_provider", "searxng").strip().lower()
    key = get("api_key", "") or get(f"{provider}_api_key", "") if provider in ("bing", "google") else get("api_key", "")
    return SearchSettings(
        provider=provider,
        api_base=(get("api_base", "") or default_base(provider)).rstrip("/"),
        api_key=key,
        engine_id=get("google_search_engine_id", ""),
        result_count=get("result_count", 3),
        timeout_s=float(get("timeout", 10.0)),
        max_bytes=int(get("max_response_kb", 1024)) * 1024,
    )


class WebSearch(ExtRole):
    @classmethod
    def check_startup(cls, name: str, settings: dict[str, Any]) -> None:
        require_enabled(name, settings, "sends queries to a web search engine")
        check_settings(settings_from(settings))

    def reply(self, ctx: RoundContext) -> Post:
        incoming = ctx.last_post
        proxy = ctx.emitter.post_proxy(ctx.round.id, Post(send_from=self.alias))
        proxy.update_send_to(str(incoming.send_from))
        proxy.update_message(self.answer(incoming.message), is_end=True)
        return proxy.end()

    def answer(self, message: str) -> str:
        """The results of each query, numbered, or what went wrong."""
        queries = [q.strip() for q in message.split("|") if q.strip()]
        if not queries:
            return "WebSearch was sent no query."
        dropped = queries[MAX_QUERIES:]
        queries = queries[:MAX_QUERIES]
        settings = settings_from(self.settings)
        seen: set[str] = set()
        results: list[Result] = []
        problems: list[str] = []
        for query in queries:
            found: list[Result] = []
            try:
                found = search(settings, query)
            except SearchFailed as exc:
                problems.append(f"{query}: {exc}")
            for result in found:
                if result.url not in seen:
                    seen.add(result.url)
                    results.append(result)
        said = " | ".join(queries)
        lines = [f"WebSearch found {len(results)} result{'s' if len(results) != 1 else ''} for: {said}"]
        for number, result in enumerate(results, 1):
            lines.append(f"{number}. {result.title or '(no title)'}\n   URL: {result.url}")
            if result.snippet:
                lines.append(f"   {result.snippet}")
        lines.extend(f"The search for {problem}." for problem in problems)
        if dropped:
            lines.append(f"Only the first {MAX_QUERIES} queries were searched; not: {' | '.join(dropped)}")
        return "\n".join(lines)
