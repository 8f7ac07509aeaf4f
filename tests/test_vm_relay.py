"""The guestfwd relay: stdin/stdout ↔ TCP, one process per connection.

Run exactly as qemu runs it (`relay_command`: the script with -S -I).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builder.ports import free_port
from builder.vm.qemu import relay_command
from builder.vm.relay import relay


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"path={self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_relay_in_process_over_pipes_and_a_real_socket(server: ThreadingHTTPServer) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t = threading.Thread(target=relay, args=(server.server_address[1],),
                         kwargs={"stdin": in_r, "stdout": out_w})
    t.start()
    os.write(in_w, b"GET /latest/meta-data/ HTTP/1.0\r\n\r\n")
    os.close(in_w)  # guest closed its side: the relay half-closes upstream
    t.join(timeout=10)
    assert not t.is_alive()
    os.close(out_w)
    answer = b""
    while chunk := os.read(out_r, 4096):
        answer += chunk
    os.close(out_r)
    os.close(in_r)
    assert answer.startswith(b"HTTP/1.0 200")
    assert answer.endswith(b"path=/latest/meta-data/")


def test_many_connections_each_get_their_own_relay_process(
    server: ThreadingHTTPServer,
) -> None:
    """What the `tcp:` form of guestfwd could not do: every connection answered."""
    port = server.server_address[1]
    procs = [
        subprocess.Popen(shlex.split(relay_command(port)),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(5)
    ]
    for i, p in enumerate(procs):
        out, _ = p.communicate(f"GET /n/{i} HTTP/1.0\r\n\r\n".encode(), timeout=20)
        assert p.returncode == 0
        assert out.startswith(b"HTTP/1.0 200") and out.endswith(f"path=/n/{i}".encode())


def test_relay_to_a_closed_port_fails_fast() -> None:
    p = subprocess.run(shlex.split(relay_command(free_port())),
                       input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=20)
    assert p.returncode != 0 and p.stdout == b""
    assert b"ConnectionRefusedError" in p.stderr
