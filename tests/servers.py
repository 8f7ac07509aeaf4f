"""Servers the tests run as child processes (nginx, puma): started, waited for
until their port accepts, and always stopped; and small HTTP servers in a
thread of the test's own process."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from builder.wait import Waiter, wait_for


@contextmanager
def serving(argv: Sequence[str], port: int, log: Path, *, stop: int = signal.SIGTERM,
            timeout: float = 60, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` (stderr into `log`) until 127.0.0.1:`port` accepts; on the way
    out send `stop`, then kill it if it is still there after 20 s."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=err, **popen)
    try:
        def listening() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited with {proc.returncode}: "
                                     f"{log.read_text(errors='replace')}")
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        wait_for(listening, Waiter(f"{argv[0]} to listen on {port}", attempts=100_000,
                                   interval=0.05, timeout=timeout), retry_on=(OSError,))
        yield proc
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def serving_http(handler: type[BaseHTTPRequestHandler],
                 address: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[ThreadingHTTPServer]:
    """`handler` answering on `address` (port 0: a free one, see
    server_address) from a thread, until the block ends."""
    server = ThreadingHTTPServer(address, handler)
    # shutdown() waits for serve_forever's next poll: 0.05 s, not the default 0.5 s
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
