"""A local kernel's shell and iopub channels as a blocking client on plain ZMQ sockets.

jupyter_client's ``BlockingKernelClient`` runs its asyncio client through ``run_sync``: every
read, even one that finds nothing, builds and steps an event loop. A round waiting for its code
polls IOPub ten times a second, and with a hundred rounds in flight that polling alone took
~30 % of a core in the web server, beside the GIL it held. Here a read is one ``zmq_poll``
(which lets go of the GIL while it waits) and one ``recv``.

Messages are still built and signed by ``jupyter_client.session.Session``. Incoming ones are
checked against the connection's key (``Session.sign``) and decoded without Session's date
parsing, which nothing here reads; a part that is not a JSON object is dropped with its message.
Same method names as ``BlockingKernelClient`` and ``GatewayChannels``, so ``KernelRPC`` and
``user_run`` do not care which they have. Not thread-safe (ZMQ sockets are
not): one caller at a time, as the executor's lock ensures.

Every kernel's two sockets come from one ZMQ context of this module's (``channel_context``), made for
as many sockets as ZMQ allows: a context's default is 1,023 sockets, so a server could hold no more
than 511 kernels at once and the 512th failed to start. Each kernel also holds ~4 file descriptors
here, so the process's soft limit on open files is raised to its hard limit with it.
"""

from __future__ import annotations

import json
import queue
import resource
import threading
import time
from hmac import compare_digest
from typing import Any, Mapping

import zmq
from jupyter_client.session import Session

from core.execution.handle import ShellRequests

RECONNECT_FIRST_MS = 5
RECONNECT_MAX_MS = 100


_context: zmq.Context[zmq.Socket[bytes]] | None = None
_context_lock = threading.Lock()


def channel_context() -> zmq.Context[zmq.Socket[bytes]]:
    """The ZMQ context of every kernel's channels, sized for ZMQ's most sockets (made once)."""
    global _context
    with _context_lock:
        if _context is None:
            raise_open_files_limit()
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            context.max_sockets = context.get(zmq.SOCKET_LIMIT)  # before the first socket, as ZMQ requires
            _context = context
        return _context


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # kept as it was: the sockets' own error names the limit if it is ever reached
    return soft


class InvalidMessage(ValueError):
    """A kernel message without a valid signature or with missing parts: dropped, never used."""


class KernelChannels(ShellRequests):
    """Shell (DEALER) and IOPub (SUB) sockets to one kernel, from its connection info."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        key = info["key"]
        self.session = Session(
            key=key.encode() if isinstance(key, str) else key,
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            username="weaver",
        )
        context = channel_context()
        self._shell = context.socket(zmq.DEALER)
        self._iopub = context.socket(zmq.SUB)
        for sock in (self._shell, self._iopub):
            sock.linger = 0
            # A kernel just forked binds its sockets a moment after we connect; ZMQ's default
            # retry is 100 ms later, two thirds of a start. Retry soon, backing off to that.
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_FIRST_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        self._shell.setsockopt(zmq.IDENTITY, self.session.bsession)
        self._iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self._shell.connect(_url(info, "shell_port"))
        self._iopub.connect(_url(info, "iopub_port"))

    # ----- what KernelRPC and user_run call (BlockingKernelClient's names) ------------------------

    def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return self._receive(self._shell, timeout)

    def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return self._receive(self._iopub, timeout)

    def stop_channels(self) -> None:
        self._shell.close(linger=0)
        self._iopub.close(linger=0)

    # ----- inside ---------------------------------------------------------------------------------

    def _shell_request(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.session.msg(msg_type, content)
        self.session.send(self._shell, msg)
        return str(msg["header"]["msg_id"])

    def _receive(self, sock: zmq.Socket[bytes], timeout: float | None) -> dict[str, Any]:
        """The next valid message on ``sock`` within ``timeout`` (None: wait); ``queue.Empty`` if none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not sock.poll(wait_ms):
                raise queue.Empty
            try:
                return self._decode(sock.recv_multipart())
            except InvalidMessage:
                continue  # dropped: wait on for a valid one

    def _decode(self, frames: list[bytes]) -> dict[str, Any]:
        try:
            start = frames.index(b"<IDS|MSG>") + 1
        except ValueError:
            raise InvalidMessage("no delimiter") from None
        parts = frames[start:]
        if len(parts) < 5:
            raise InvalidMessage("missing parts")
        signature = parts[0]
        if self.session.auth is not None and not compare_digest(signature, self.session.sign(parts[1:5])):
            raise InvalidMessage("bad signature")
        try:
            header, parent, metadata, content = (json.loads(part) for part in parts[1:5])
        except ValueError:
            raise InvalidMessage("not JSON") from None
        # The kernel runs the user's code, which can read the key and sign anything: every part
        # callers read with ``.get`` must be an object, or a round would fail on it.
        if not all(isinstance(part, dict) for part in (header, parent, metadata, content)):
            raise InvalidMessage("a part is not a JSON object")
        return {
            "header": header,
            "msg_id": header.get("msg_id"),
            "msg_type": header.get("msg_type"),
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
            "buffers": parts[5:],
        }


def _url(info: Mapping[str, Any], port_key: str) -> str:
    """``tcp://ip:port``, or ``ipc://path-port`` as jupyter_client names IPC endpoints."""
    if info.get("transport", "tcp") == "tcp":
        return f"tcp://{info['ip']}:{info[port_key]}"
    return f"{info['transport']}://{info['ip']}-{info[port_key]}"
