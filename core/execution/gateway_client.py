"""Talking to a Jupyter kernel gateway: its REST API (kernels) and one kernel's websocket channels.

Why not ``jupyter_server.gateway`` (GatewayKernelManager / GatewayKernelClient)? Both are async,
configured through one process-wide ``GatewayClient`` singleton, and the client's websocket sends
neither the auth token nor a channel name (a token-protected gateway refuses it; an unnamed
message is logged whole by the gateway, file chunks included) and ignores ``validate_cert``.
What is reused is Jupyter's own message machinery: ``jupyter_client.session.Session`` builds every
message, and messages travel in the gateway's JSON websocket format. ``GatewayChannels`` is the
small blocking adapter KernelRPC and user_run need: ``execute``, ``kernel_info``,
``get_shell_msg`` and ``get_iopub_msg`` with ``queue.Empty`` on timeout, as a BlockingKernelClient.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import threading
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session

from core.config import ExecutionSettings
from core.errors import GatewayAuthError, GatewayError, GatewayUnavailable
from core.execution.handle import ShellRequests

logger = logging.getLogger(__name__)

DEAD_STATES = ("restarting", "dead")  # the gateway's own iopub notes that the kernel process died


_SHARED: dict[tuple[object, ...], GatewayREST] = {}
_SHARED_LOCK = threading.Lock()


class GatewayREST:
    """The gateway's REST API with Weaver's token and TLS settings; every failure is a ``GatewayError``."""

    @classmethod
    def shared(cls, settings: ExecutionSettings) -> GatewayREST:
        """One client (one connection pool) per gateway set-up for the whole process, not per session."""
        key = tuple(getattr(settings, name) for name in type(settings).model_fields if name.startswith("gateway_"))
        with _SHARED_LOCK:
            rest = _SHARED.get(key)
            if rest is None:
                rest = _SHARED[key] = cls(settings)
            return rest

    def __init__(self, settings: ExecutionSettings) -> None:
        if settings.gateway_url is None:
            raise ValueError("execution.gateway_url is not set")
        self.settings = settings
        self.base = settings.gateway_url
        self.headers = auth_headers(settings)
        try:
            verify = _verify(settings)
        except (OSError, ssl.SSLError) as exc:
            raise GatewayUnavailable(
                "The TLS files for the kernel gateway (execution.gateway_ca_file, gateway_client_cert, "
                f"gateway_client_key) could not be loaded: {exc}"
            ) from exc
        self._client = httpx.Client(
            base_url=self.base, headers=self.headers, verify=verify, timeout=settings.gateway_request_timeout
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> httpx.Response:
        """One request (``timeout``: seconds, instead of ``gateway_request_timeout``); 401/403 raise
        ``GatewayAuthError``, no answer ``GatewayUnavailable``."""
        try:
            extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
            response = self._client.request(method, path, json=body, **extra)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(
                f"The kernel gateway at {self.base} (execution.gateway_url) could not be reached: {exc}"
            ) from exc
        if response.status_code in (401, 403):
            raise GatewayAuthError(
                f"The kernel gateway at {self.base} refused Weaver's credentials (HTTP {response.status_code}): "
                "set execution.gateway_token to the gateway's auth token."
            )
        return response

    def kernelspecs(self) -> list[str]:
        """The kernel names the gateway can start (also the authentication check)."""
        response = self.request("GET", "/api/kernelspecs")
        try:
            response.raise_for_status()
            specs = response.json().get("kernelspecs", {})
        except (httpx.HTTPStatusError, ValueError, AttributeError) as exc:
            raise GatewayUnavailable(
                f"{self.base} (execution.gateway_url) did not answer like a Jupyter kernel gateway "
                f"(GET /api/kernelspecs: HTTP {response.status_code})."
            ) from exc
        return sorted(str(name) for name in specs)

    def answers(self, timeout: float) -> None:
        """The gateway answers an authenticated request within ``timeout`` s (``/ready``); else ``GatewayError``."""
        response = self.request("GET", "/api/kernelspecs", timeout=timeout)
        if response.status_code != 200:
            raise GatewayUnavailable(f"the kernel gateway at {self.base} answered HTTP {response.status_code}")

    def start_kernel(self, name: str, env: dict[str, str]) -> str:
        """``POST /api/kernels``; returns the new kernel's id."""
        response = self.request("POST", "/api/kernels", {"name": name, "env": env})
        try:
            if response.status_code not in (200, 201):
                raise ValueError(f"HTTP {response.status_code} {_why(response)}")
            return str(response.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise GatewayError(f"the gateway did not start a {name!r} kernel: {exc}") from exc

    def delete_kernel(self, kernel_id: str) -> None:
        response = self.request("DELETE", f"/api/kernels/{quote(kernel_id)}")
        if response.status_code not in (204, 404):
            raise GatewayError(f"the gateway did not stop kernel {kernel_id}: HTTP {response.status_code}")

    def interrupt_kernel(self, kernel_id: str) -> None:
        self.request("POST", f"/api/kernels/{quote(kernel_id)}/interrupt")

    def restart_kernel(self, kernel_id: str) -> None:
        self.request("POST", f"/api/kernels/{quote(kernel_id)}/restart")

    def kernel_exists(self, kernel_id: str) -> bool:
        """``GET /api/kernels/{id}``: False once the gateway no longer has it (404)."""
        response = self.request("GET", f"/api/kernels/{quote(kernel_id)}")
        return response.status_code != 404

    def kernels(self) -> list[dict[str, Any]]:
        """``GET /api/kernels``: every kernel the gateway runs now."""
        response = self.request("GET", "/api/kernels")
        try:
            response.raise_for_status()
            found = response.json()
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise GatewayError(f"the gateway did not list its kernels: {exc}") from exc
        return found if isinstance(found, list) else []


def check_gateway(settings: ExecutionSettings) -> list[str]:
    """Refuse a gateway Weaver cannot use: unreachable, wrong token, or no ``gateway_kernel_name``.

    Returns its kernel names. Called at app start so ``weaver ui`` fails before serving anyone.
    """
    rest = GatewayREST(settings)
    try:
        names = rest.kernelspecs()
    finally:
        rest.close()
    if settings.gateway_kernel_name not in names:
        raise GatewayUnavailable(
            f"The kernel gateway at {settings.gateway_url} has no kernel named {settings.gateway_kernel_name!r} "
            f"(execution.gateway_kernel_name); it offers: {', '.join(names) or 'none'}."
        )
    return names


def auth_headers(settings: ExecutionSettings) -> dict[str, str]:
    token = settings.gateway_token.get_secret_value() if settings.gateway_token is not None else ""
    return {"Authorization": f"token {token}"} if token else {}


def _verify(settings: ExecutionSettings) -> ssl.SSLContext | bool:
    """httpx's ``verify``: an SSL context carrying the CA file and client certificate, or False."""
    if not settings.gateway_validate_cert:
        return False
    context = ssl.create_default_context(cafile=str(settings.gateway_ca_file) if settings.gateway_ca_file else None)
    if settings.gateway_client_cert is not None:
        key = str(settings.gateway_client_key) if settings.gateway_client_key else None
        context.load_cert_chain(str(settings.gateway_client_cert), key)
    return context


def _why(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]


def channels_url(base: str, kernel_id: str) -> str:
    """``ws(s)://…/api/kernels/{id}/channels`` for an ``http(s)://`` gateway base."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path.rstrip('/')}/api/kernels/{quote(kernel_id)}/channels"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class GatewayChannels(ShellRequests):
    """One kernel's shell and iopub channels over the gateway's websocket, as a blocking client.

    A reader thread sorts incoming messages into a queue per channel; it also notes the gateway's
    ``restarting``/``dead`` status (the kernel process died) and a closed socket, for ``alive``.
    """

    def __init__(self, settings: ExecutionSettings, kernel_id: str, timeout: float) -> None:
        import websocket  # websocket-client: the library jupyter_server's own gateway client uses

        assert settings.gateway_url is not None
        self.session = Session(username="weaver")
        self._queues: dict[str, queue.Queue[dict[str, Any]]] = {"shell": queue.Queue(), "iopub": queue.Queue()}
        self._send_lock = threading.Lock()
        self.died = threading.Event()
        self.closed = threading.Event()
        self._socket = websocket.create_connection(
            channels_url(settings.gateway_url, kernel_id),
            header=[f"{k}: {v}" for k, v in auth_headers(settings).items()],
            timeout=timeout,
            sslopt=_sslopt(settings),
            enable_multithread=True,
            skip_utf8_validation=True,  # its pure-Python check cost ~130 ms of CPU per 700 KB message
        )
        self._socket.settimeout(None)  # the reader blocks until a message or the close
        self._reader = threading.Thread(target=self._read, name=f"weaver-gateway-{kernel_id[:8]}", daemon=True)
        self._reader.start()

    # ----- what KernelRPC and user_run call (BlockingKernelClient's names) ------------------------

    def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return self._queues["shell"].get(timeout=timeout)

    def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return self._queues["iopub"].get(timeout=timeout)

    def stop_channels(self) -> None:
        self.closed.set()
        try:
            self._socket.close()
        except Exception:  # noqa: BLE001 - already closed by the gateway
            logger.debug("closing the gateway websocket failed", exc_info=True)
        self._reader.join(5)

    # ----- inside ---------------------------------------------------------------------------------

    def _shell_request(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.session.msg(msg_type, content)
        wire = {**msg, "channel": "shell"}
        with self._send_lock:
            self._socket.send(json.dumps(wire, default=json_default))
        return str(msg["header"]["msg_id"])

    def _ack_now(self) -> None:
        """Acknowledge what arrives at once (Linux ``TCP_QUICKACK``, which the kernel clears again).

        The gateway writes each message as a small packet without ``TCP_NODELAY``; with our
        delayed ACK, Nagle's algorithm then held its next message ~40 ms, on every round trip.
        """
        sock = getattr(self._socket, "sock", None)
        if _QUICKACK is not None and sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass

    def _read(self) -> None:
        try:
            while not self.closed.is_set():
                self._ack_now()
                raw = self._socket.recv()
                if not raw:
                    break
                msg = json.loads(raw)
                channel = msg.pop("channel", None)
                if channel == "iopub" and msg.get("header", {}).get("msg_type") == "status":
                    if msg.get("content", {}).get("execution_state") in DEAD_STATES:
                        self.died.set()
                target = self._queues.get(str(channel))
                if target is not None:
                    target.put(msg)
        except Exception as exc:  # noqa: BLE001 - the socket closed: the kernel is gone for us
            if not self.closed.is_set():
                logger.warning("the gateway websocket closed: %s", exc)
        finally:
            self.closed.set()


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _sslopt(settings: ExecutionSettings) -> dict[str, Any]:
    """websocket-client's TLS options, the same as the REST client's."""
    if not settings.gateway_validate_cert:
        return {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
    opts: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if settings.gateway_ca_file is not None:
        opts["ca_certs"] = str(settings.gateway_ca_file)
    if settings.gateway_client_cert is not None:
        opts["certfile"] = str(settings.gateway_client_cert)
        if settings.gateway_client_key is not None:
            opts["keyfile"] = str(settings.gateway_client_key)
    return opts
