"""A listening socket per worker (service.sockets): what each worker unpickles, and the kernel's spreading."""

from __future__ import annotations

import pickle
import socket
import sys
from contextlib import ExitStack

import pytest
from uvicorn.config import STARTUP_FAILURE

from service import sockets

pytestmark = pytest.mark.skipif(not sockets.supported(), reason="SO_REUSEPORT spreads connections on Linux")


def _accepted(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def test_each_unpickled_copy_is_a_socket_of_its_own_on_the_reserved_port():
    with ExitStack() as stack:
        reserved = sockets.WorkerSockets("127.0.0.1", 0)  # port 0: the master picks one port for all
        (master,) = reserved
        stack.enter_context(master)
        assert reserved.port == master.getsockname()[1] > 0
        # What uvicorn's Multiprocess hands each worker it starts goes through pickle.
        copies = [pickle.loads(pickle.dumps(reserved)) for _ in range(2)]
        assert all(type(copy) is list and len(copy) == 1 for copy in copies)
        mine = [stack.enter_context(sock) for (sock,) in copies]
        assert len({master.fileno(), *(sock.fileno() for sock in mine)}) == 3
        for sock in mine:
            assert sock.getsockname() == ("127.0.0.1", reserved.port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen(64)
            sock.setblocking(False)
        # The master's socket never listens: the kernel spreads connections over the workers' only.
        for _ in range(48):
            stack.enter_context(socket.create_connection(("127.0.0.1", reserved.port)))
        counts = [_accepted(sock) for sock in mine]
        assert sum(counts) == 48 and min(counts) > 0, counts


def test_a_port_in_use_is_a_clear_error_before_any_worker_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="Address already in use"):
            sockets.WorkerSockets("127.0.0.1", port)
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}: .*Address already in use"):
            sockets.serve("service.main:create_app", factory=True, host="127.0.0.1", port=port, workers=2)


def test_a_worker_that_cannot_bind_exits_as_a_startup_failure(caplog):
    # uvicorn's master stops on STARTUP_FAILURE instead of restarting the worker forever.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exited:
            sockets._bind_in_worker("127.0.0.1", taken.getsockname()[1])
    assert exited.value.code == STARTUP_FAILURE
    assert "worker cannot bind 127.0.0.1:" in caplog.text


def test_supported_only_where_the_kernel_spreads(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not sockets.supported()
