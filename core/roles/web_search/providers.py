"""The search engines WebSearch can ask, one small function each, chosen once by
``web_search.api_provider``: SearXNG's JSON API (self-hostable), Bing Web Search v7 and Google's
Custom Search JSON API. The operator sets the address (``web_search.api_base``), so it is trusted;
redirects are still not followed and the answer's size is capped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from core.errors import ConfigError


@dataclass(frozen=True)
class Result:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class SearchSettings:
    provider: str
    api_base: str
    api_key: str
    engine_id: str  # Google's search engine id (cx)
    result_count: int
    timeout_s: float
    max_bytes: int


class SearchFailed(Exception):
    """The engine did not answer usefully; the message says how, for the Planner."""


def _searxng(s: SearchSettings, query: str) -> tuple[str, dict[str, str], dict[str, str]]:
    return f"{s.api_base}/search", {"q": query, "format": "json"}, {}


def _bing(s: SearchSettings, query: str) -> tuple[str, dict[str, str], dict[str, str]]:
    headers = {"Ocp-Apim-Subscription-Key": s.api_key}
    return f"{s.api_base}/v7.0/search", {"q": query, "count": str(s.result_count)}, headers


def _google(s: SearchSettings, query: str) -> tuple[str, dict[str, str], dict[str, str]]:
    params = {"key": s.api_key, "cx": s.engine_id, "q": query, "num": str(min(s.result_count, 10))}
    return f"{s.api_base}/customsearch/v1", params, {}


def _rows(data: Any, path: tuple[str, ...]) -> list[dict[str, Any]]:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


# provider -> (request builder, where the results are, their title/url/snippet keys, default api_base)
Request = Callable[[SearchSettings, str], tuple[str, dict[str, str], dict[str, str]]]
PROVIDERS: dict[str, tuple[Request, tuple[str, ...], tuple[str, str, str], str]] = {
    "searxng": (_searxng, ("results",), ("title", "url", "content"), ""),
    "bing": (_bing, ("webPages", "value"), ("name", "url", "snippet"), "https://api.bing.microsoft.com"),
    "google": (_google, ("items",), ("title", "link", "snippet"), "https://www.googleapis.com"),
}


def check_settings(s: SearchSettings) -> None:
    """What each provider needs, said at start."""
    if s.provider not in PROVIDERS:
        hint = " (duckduckgo needs a scraping library Weaver does not ship)" if s.provider == "duckduckgo" else ""
        raise ConfigError(
            f"web_search.api_provider: {s.provider!r} is not available{hint}; use one of {', '.join(PROVIDERS)}"
        )
    if not s.api_base.startswith(("http://", "https://")):
        raise ConfigError(
            f"web_search.api_base: the {s.provider} server's http(s) address is needed, got {s.api_base!r}"
        )
    if s.provider in ("bing", "google") and not s.api_key:
        raise ConfigError(f"web_search.api_key (or web_search.{s.provider}_api_key) is needed for {s.provider}")
    if s.provider == "google" and not s.engine_id:
        raise ConfigError("web_search.google_search_engine_id is needed for google")
    if s.result_count < 1:
        raise ConfigError(f"web_search.result_count: must be at least 1, got {s.result_count}")
    if s.timeout_s <= 0 or s.max_bytes <= 0:
        raise ConfigError("web_search.timeout and web_search.max_response_kb: must be more than 0")


def default_base(provider: str) -> str:
    return PROVIDERS[provider][3] if provider in PROVIDERS else ""


def search(s: SearchSettings, query: str) -> list[Result]:
    """Up to ``result_count`` results for ``query``."""
    build, path, (title_key, url_key, snippet_key), _ = PROVIDERS[s.provider]
    url, params, headers = build(s, query)
    try:
        with httpx.Client(follow_redirects=False, trust_env=False, timeout=s.timeout_s) as client:
            with client.stream("GET", url, params=params, headers={"Accept": "application/json", **headers}) as reply:
                if reply.status_code != 200:
                    raise SearchFailed(f"the {s.provider} server answered HTTP {reply.status_code}")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body.extend(chunk)
                    if len(body) > s.max_bytes:
                        kb = s.max_bytes // 1024
                        too_big = f"the {s.provider} answer was larger than {kb} KB (web_search.max_response_kb)"
                        raise SearchFailed(too_big)
    except httpx.TimeoutException:
        late = f"the {s.provider} server did not answer within {s.timeout_s:g} s (web_search.timeout)"
        raise SearchFailed(late) from None
    except httpx.HTTPError as exc:
        raise SearchFailed(f"the {s.provider} server could not be reached ({type(exc).__name__})") from None
    try:
        data = json.loads(bytes(body))
    except ValueError:
        raise SearchFailed(f"the {s.provider} server's answer was not JSON") from None
    results = []
    for row in _rows(data, path):
        url_value = str(row.get(url_key) or "")
        if url_value:
            title = " ".join(str(row.get(title_key) or "").split())
            results.append(Result(title, url_value, " ".join(str(row.get(snippet_key) or "").split())))
    return results[: s.result_count]
