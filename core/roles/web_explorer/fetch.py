"""One page fetched for the WebExplorer without making the server a proxy into its own network.

The URL comes from the model, so it is hostile input: only http(s); the host is resolved once and
every address it resolves to must be public (no loopback, private, link-local such as the cloud
metadata address, shared, multicast or reserved range) unless the operator names the host in
``web_explorer.allowed_hosts``; the connection then goes to the address that was checked (the URL's
host kept in the Host header and TLS name), so a second DNS answer cannot swap it. Redirects are
followed by hand, each hop checked the same way; the size, the time and the content type are capped.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

ACCEPTED_TYPES = ("text/html", "text/plain")


class FetchRefused(Exception):
    """The page is not fetched or not read; the message says why, for the Planner and the user."""


@dataclass(frozen=True)
class FetchLimits:
    allowed_hosts: frozenset[str]  # lower-case host names (or literal addresses) let through to any address
    max_bytes: int
    timeout_s: float
    max_redirects: int


@dataclass(frozen=True)
class Page:
    url: str  # the last hop's URL
    content_type: str
    text: str  # decoded body


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def public(address: Address) -> bool:
    """Whether an address is on the public internet. An IPv6 address that carries an IPv4 one
    (mapped, NAT64, 6to4, Teredo) is judged by the IPv4 address too."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        if address in _NAT64:
            inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(v4 is not None and not public(v4) for v4 in inner):
            return False
        if address.ipv4_mapped is not None:
            return True  # the mapped IPv4 address was public
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(f"the host {host} could not be resolved ({exc})") from None
    found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(found))


def checked_target(url: str, limits: FetchLimits) -> tuple[str, list[Address]]:
    """``(host, addresses)``: the URL's host and the checked addresses to connect to, in DNS order."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs are fetched, not {parts.scheme or 'a URL without scheme'}")
    if parts.username is not None or parts.password is not None:
        raise FetchRefused("a URL with a user name or password is not fetched")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise FetchRefused("the URL has no host")
    if not host.isascii():
        raise FetchRefused(f"the host {host} is not written in ASCII (use its xn-- form)")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise FetchRefused("the URL's port is not a number from 0 to 65535") from None
    addresses = resolve(host, port)
    if not addresses:
        raise FetchRefused(f"the host {host} has no address")
    if host not in limits.allowed_hosts:
        private = [a for a in addresses if not public(a)]
        if private:
            raise FetchRefused(
                f"{host} resolves to a private, loopback, link-local or reserved address ({private[0]}); "
                "such addresses are fetched only for hosts named in web_explorer.allowed_hosts"
            )
    return host, addresses


def _pinned(url: str, address: Address) -> str:
    """``url`` with its host replaced by the checked address (the port and path kept)."""
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))


def fetch_page(url: str, limits: FetchLimits) -> Page:
    """GET ``url`` under the rules above; ``FetchRefused`` says which one stopped it."""
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=limits.timeout_s) as client:
        for _hop in range(limits.max_redirects + 1):
            host, addresses = checked_target(url, limits)
            client.cookies.clear()  # requests go to addresses: a cookie of one hop is not sent on
            page, location = _get(client, url, host, addresses, limits)
            if page is not None:
                return page
            url = urljoin(url, location)
    raise FetchRefused(f"more than {limits.max_redirects} redirects (web_explorer.max_redirects)")


def _get(
    client: httpx.Client, url: str, host: str, addresses: list[Address], limits: FetchLimits
) -> tuple[Page | None, str]:
    """One hop: the page, or ``(None, location)`` for a redirect. Each checked address is tried in
    turn until one accepts the connection (a host with an IPv6 address the server cannot reach)."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": host} if urlsplit(url).scheme.lower() == "https" else {}
    headers = {"Host": netloc, "Accept": "text/html, text/plain;q=0.9", "User-Agent": "Weaver-WebExplorer"}
    for number, address in enumerate(addresses, 1):
        try:
            with client.stream("GET", _pinned(url, address), headers=headers, extensions=extensions) as response:
                if not response.is_redirect:
                    return _read(url, response, limits), ""
                location = response.headers.get("location", "")
                if not location:
                    raise FetchRefused(f"{url} answered {response.status_code} without a Location")
                return None, location
        except httpx.ConnectError as exc:
            if number == len(addresses):
                raise FetchRefused(f"{url} could not be reached ({exc})") from None
        except httpx.TimeoutException:
            raise FetchRefused(f"{url} did not answer within {limits.timeout_s:g} s (web_explorer.timeout)") from None
        except httpx.HTTPError as exc:
            raise FetchRefused(f"{url} could not be fetched ({type(exc).__name__}: {exc})") from None
    raise FetchRefused(f"{url}: no address to connect to")


def _read(url: str, response: httpx.Response, limits: FetchLimits) -> Page:
    if response.status_code >= 400:
        raise FetchRefused(f"{url} answered HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in ACCEPTED_TYPES:
        raise FetchRefused(f"{url} is {content_type or 'of no stated type'}; only text/html and text/plain are read")
    too_big = FetchRefused(
        f"{url} is larger than {limits.max_bytes // 1024} KB (web_explorer.max_page_kb); it was not read"
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_big
    body = bytearray()
    deadline = time.monotonic() + limits.timeout_s  # the whole body, not each read (a slow drip is cut)
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > limits.max_bytes:
            raise too_big
        if time.monotonic() > deadline:
            raise FetchRefused(f"{url} took longer than {limits.timeout_s:g} s to send (web_explorer.timeout)")
    encoding = response.charset_encoding or "utf-8"
    try:
        text = bytes(body).decode(encoding, errors="replace")
    except LookupError:
        text = bytes(body).decode("utf-8", errors="replace")
    return Page(url=url, content_type=content_type, text=text)
