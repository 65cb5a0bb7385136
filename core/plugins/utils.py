"""``taskweaver.plugin.utils`` for plugin files: ``make_api_call``, with the standard library only.

Inside a session's kernel the network is off unless ``execution.network`` is true.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ALLOWED_METHODS = ("GET", "POST", "PUT", "DELETE")


def make_api_call(
    host: Any = "",
    endpoint: Any = "",
    method: Any = "GET",
    headers: dict[str, str] | None = None,
    query_params: dict[str, Any] | str | None = None,
    body: Any = "",
    timeout_secs: int = 60,
) -> str:
    """Call ``host`` + ``endpoint``; returns JSON text ``{"status", "status_code", "response"}``
    ("success" for any HTTP answer, "error" with code 500 when no answer came)."""
    if not (isinstance(host, str) and isinstance(endpoint, str) and isinstance(method, str)):
        raise ValueError("host, endpoint and method must be strings")
    if method not in ALLOWED_METHODS:
        raise ValueError(f"method must be one of {list(ALLOWED_METHODS)}")
    params = _params(query_params)
    base = host if host.startswith(("http://", "https://")) else f"https://{host}"
    url = urllib.parse.urljoin(base, endpoint)
    if params:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params, doseq=True)
    data = None if body in ("", None) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method=method, headers=dict(headers or {"Content-Type": "application/json"})
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_secs) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return json.dumps({"status": "error", "status_code": 500, "response": str(exc)})
    return json.dumps({"status": "success", "status_code": status, "response": text})


def _params(query_params: dict[str, Any] | str | None) -> dict[str, Any]:
    if not query_params:
        return {}
    if isinstance(query_params, str):
        try:
            query_params = json.loads(query_params)
        except json.JSONDecodeError:
            raise ValueError("query_params must be a dictionary or a JSON string") from None
    if not isinstance(query_params, dict):
        raise ValueError("query_params must be a dictionary or a JSON string")
    return query_params
