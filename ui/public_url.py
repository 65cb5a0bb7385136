"""``weaver ui --public-url URL``: the address colleagues type, turned into the settings it needs.

The server answers only the ``Host`` names in ``WEAVER_UI_ALLOWED_HOSTS`` and takes socket and form
requests only from the pages of ``WEAVER_UI_ALLOWED_ORIGINS`` (``ui/guards/host_origin.py``); both
default to loopback names, which on a shared machine answers nobody else. One URL names both: its
host is added to the hosts answered and its origin to the origins accepted, next to the defaults
(or next to what those variables already list), so the machine's own browser keeps working too.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ui.settings import host_literal, serving_hosts, serving_origins, ui_settings

WILDCARD_HOSTS = ("0.0.0.0", "::")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # one label of a host name, in ASCII


class PublicUrlError(ValueError):
    """``--public-url`` is not an ``http(s)://host[:port]`` address; the message says what is wrong."""


def parse_public_url(url: str) -> tuple[str, str]:
    """The ``Host`` name (no port; IPv6 in brackets) and the browser's ``Origin`` of ``url``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise PublicUrlError(f"--public-url {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise PublicUrlError(
            f"--public-url {url!r}: give an address like http://teambox:8000 or https://weaver.example.com"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise PublicUrlError(
            f"--public-url {url!r}: only scheme://host[:port] (a path prefix is set with CHAINLIT_ROOT_PATH)"
        )
    host = host_literal(_browser_host(url, parts.hostname.lower()))
    origin = f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"
    return host, origin


def _browser_host(url: str, name: str) -> str:
    """``name`` as a browser sends it in ``Host`` (IDNA names in their ``xn--`` form), once it is an
    address one can type: a DNS name or an IP literal, not a wildcard. What is refused here would
    otherwise land in ``WEAVER_UI_ALLOWED_HOSTS`` (a comma splits it) after "open ..." was printed."""
    if "%" not in name:  # an IPv6 zone (fe80::1%eth0) means nothing on another machine
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            if address.is_unspecified:
                raise PublicUrlError(
                    f"--public-url {url!r}: {name} is the listen-everywhere address, which no browser can "
                    "open; give this machine's name or address, e.g. http://teambox:8000"
                )
            return str(address)
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if not all(_DNS_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise PublicUrlError(
            f"--public-url {url!r}: {name!r} is not a host name (letters, digits, hyphens and dots) or an IP address"
        )
    return ascii_name


def public_url_env(url: str, bound_host: str, port: int) -> dict[str, str]:
    """``WEAVER_UI_ALLOWED_HOSTS`` and ``WEAVER_UI_ALLOWED_ORIGINS`` for a server bound to
    ``bound_host:port`` that people reach at ``url``: what they would be anyway, plus ``url``'s."""
    host, origin = parse_public_url(url)
    settings = ui_settings()
    hosts = serving_hosts(settings, bound_host)
    origins = serving_origins(settings, hosts, port)
    return {
        "WEAVER_UI_ALLOWED_HOSTS": ",".join(dict.fromkeys([*hosts, host])),
        "WEAVER_UI_ALLOWED_ORIGINS": ",".join(dict.fromkeys([*origins, origin])),
    }


def wildcard_advice(port: int, machine: str) -> str:
    """What to add when the server listens on every address but answers loopback names only."""
    return (
        "Note: listening on every address, but only loopback names (localhost, 127.0.0.1) are answered. "
        f"For colleagues, start it with the address they will type, e.g. `--public-url http://{machine}:{port}` "
        f"(or set WEAVER_UI_ALLOWED_HOSTS={machine})."
    )
