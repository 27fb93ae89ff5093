"""One listening socket per worker for `asd-serve` with several workers (Linux SO_REUSEPORT).

uvicorn's own multi-worker mode binds one socket in its master and every
worker accepts from it. A worker's event loop accepts every connection that
is waiting when it wakes, so a burst of new keep-alive connections (a
client's pool opening, sensors reconnecting after a network blip) lands on
whichever worker woke first and stays there while the others idle. With
SO_REUSEPORT each worker listens on a socket of its own on the same address
and the kernel spreads new connections over those sockets (by a hash of the
connection's addresses and ports).

The master still binds the address first, without listening, so a port in
use fails at start, port 0 becomes one real port that every worker binds,
and no other program can take the port while workers restart. uvicorn's
supervisor (`Multiprocess`: health checks, replacing dead workers, SIGHUP's
rolling restart, SIGTTIN / SIGTTOU) runs unchanged: it gives every worker
it starts the same `sockets` argument, pickled into the new process, and
`WorkerSockets` is that argument: unpickled in a worker it is a list
holding a socket that worker has just bound itself.

What the kernel's spreading does not know is how busy a worker is: a worker
that is alive but stuck (its event loop blocked) keeps its share of new
connections waiting until uvicorn's health check replaces it, where one
shared socket would let the other workers take them. Connections still
queued on a worker's socket when it closes (a restart, a scale-down) are
reset unless the kernel moves them to another socket of the group
(sysctl net.ipv4.tcp_migrate_req=1, Linux 5.14 and later).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

logger = logging.getLogger("uvicorn.error")


def supported() -> bool:
    # Elsewhere (macOS, the BSDs' plain SO_REUSEPORT) several sockets may bind, but one gets everything.
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT, not yet listening; OSError if it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As uvicorn's own socket: a restart may bind a port whose old connections are in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class WorkerSockets(list[socket.socket]):
    """The master's reserved socket; each worker that unpickles this gets a socket of its own."""

    def __init__(self, host: str, port: int) -> None:
        reserved = bind(host, port)
        super().__init__([reserved])
        self.host = host
        self.port: int = reserved.getsockname()[1]

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (_bind_in_worker, (self.host, self.port))


def _bind_in_worker(host: str, port: int) -> list[socket.socket]:
    """Runs in a new worker, while multiprocessing unpickles its arguments (before logging is set up)."""
    try:
        return [bind(host, port)]
    except OSError as error:
        # STARTUP_FAILURE: uvicorn's master stops instead of restarting a worker that cannot start.
        logger.error("worker cannot bind %s:%d: %s", host, port, error)
        sys.exit(STARTUP_FAILURE)


def serve(app: str, *, host: str, port: int, **options: Any) -> None:
    """`uvicorn.run(app, workers=N, ...)` with a socket per worker; SystemExit if the address is taken."""
    try:
        sockets = WorkerSockets(host, port)
    except OSError as error:
        raise SystemExit(f"cannot listen on {host}:{port}: {error}") from None
    try:
        config = Config(app, host=host, port=sockets.port, **options)
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as uvicorn writes it
        logger.info(
            "Uvicorn running on http://%s:%d with %d workers, a socket each (SO_REUSEPORT)",
            shown,
            sockets.port,
            config.workers,
        )
        Multiprocess(config, sockets=sockets).run()
    finally:
        for sock in sockets:
            sock.close()
