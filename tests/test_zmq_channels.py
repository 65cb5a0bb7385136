"""The local kernel client's own checks, against real ZMQ sockets on 127.0.0.1 standing in for a kernel."""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

from core.execution.zmq_channels import KernelChannels


@pytest.fixture
def kernel_side() -> Iterator[tuple[dict[str, Any], zmq.Socket[bytes], zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    shell, iopub = context.socket(zmq.ROUTER), context.socket(zmq.PUB)
    info = {
        "transport": "tcp",
        "ip": "127.0.0.1",
        "key": secrets.token_hex(16),
        "signature_scheme": "hmac-sha256",
        "shell_port": shell.bind_to_random_port("tcp://127.0.0.1"),
        "iopub_port": iopub.bind_to_random_port("tcp://127.0.0.1"),
    }
    yield info, shell, iopub
    shell.close(0)
    iopub.close(0)


def test_only_signed_messages_of_the_protocol_s_shape_are_taken(kernel_side: Any) -> None:
    info, shell, iopub = kernel_side
    client = KernelChannels(info)
    try:
        kernel = Session(key=info["key"].encode(), signature_scheme="hmac-sha256")
        forger = Session(key=b"not-the-key", signature_scheme="hmac-sha256")
        msg_id = client.execute("print(1)")
        request = kernel.recv(shell, mode=0)[1]  # signed with the key: accepted by the kernel side
        assert request is not None and request["content"]["code"] == "print(1)"
        assert request["header"]["msg_id"] == msg_id
        parent = request["header"]
        deadline = time.monotonic() + 10
        while True:  # a SUB socket takes a moment to join: publish until one arrives
            kernel.send(iopub, "status", {"execution_state": "starting"})
            try:
                client.get_iopub_msg(timeout=0.05)
                break
            except queue.Empty:
                assert time.monotonic() < deadline, "the IOPub subscription never connected"
        forger.send(iopub, "stream", {"name": "stdout", "text": "forged"}, parent=parent)
        iopub.send_multipart([b"<IDS|MSG>", b"sig", b"{", b"{}", b"{}", b"{}"])  # garbage
        # Signed with the key (user code in the kernel can read it) but not objects where one is read.
        for shape in ([b"{}", b"[]", b"{}", b"{}"], [b"{}", b"{}", b"{}", b"1"], [b"[]", b"{}", b"{}", b"{}"]):
            iopub.send_multipart([b"<IDS|MSG>", kernel.sign(shape), *shape])
        kernel.send(iopub, "stream", {"name": "stdout", "text": "real"}, parent=parent)
        got = client.get_iopub_msg(timeout=5)
        assert got["content"]["text"] == "real" and got["parent_header"]["msg_id"] == msg_id
        with pytest.raises(queue.Empty):
            client.get_iopub_msg(timeout=0.05)
    finally:
        client.stop_channels()


def test_one_server_holds_channels_to_more_than_511_kernels(kernel_side: Any) -> None:
    """ZMQ's default of 1,023 sockets a context let a server hold at most 511 kernels (two sockets
    each): the 512th kernel failed to start. 600 kernels' channels open here, and the last still
    talks to its kernel."""
    info, shell, _iopub = kernel_side
    clients: list[KernelChannels] = []
    try:
        for _ in range(600):
            clients.append(KernelChannels(info))
        msg_id = clients[-1].execute("print(1)")
        kernel = Session(key=info["key"].encode(), signature_scheme="hmac-sha256")
        shell.poll(10_000)
        request = kernel.recv(shell, mode=0)[1]
        assert request is not None and request["header"]["msg_id"] == msg_id
    finally:
        for client in clients:
            client.stop_channels()
