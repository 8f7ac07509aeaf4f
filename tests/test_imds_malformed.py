"""Malformed requests to the IMDS emulator, sent as raw bytes: each gets an
HTTP answer (400, or the standard library's 4xx/5xx for what it parses
itself), never a dropped connection, and the server keeps serving."""

from __future__ import annotations

import socket

import pytest

from builder.imds import ImdsConfig, ImdsServer

TTL = b"X-aws-ec2-metadata-token-ttl-seconds"


@pytest.fixture
def imds() -> ImdsServer:
    with ImdsServer(ImdsConfig(instance_id="i-0raw")) as server:
        yield server  # type: ignore[misc]


def exchange(server: ImdsServer, raw: bytes) -> bytes:
    """Send `raw`, half-close, and read until the server closes or answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), f"no HTTP answer: {answer[:80]!r}"
    return int(answer.split(b" ", 2)[1])


def still_serving(server: ImdsServer) -> None:
    answer = exchange(server, b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n" + TTL
                      + b": 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200


@pytest.mark.parametrize("raw", [
    # TTL headers that are not ASCII digits (str.isdigit() accepts some of these)
    b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + b": \xb2\r\n\r\n",  # latin-1 superscript 2
    b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + "٦٠".encode() + b"\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + b": \xd9\xa6\xd9\xa0\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + b": 1e3\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + b": 99999999999999999999\r\n\r\n",
    # Content-Length that is not a small non-negative number
    b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: \xb2\r\n" + TTL + b": 60\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # request lines the standard library refuses itself
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"\xff\xfe / HTTP/1.1\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"b" * 70000 + b"\r\n\r\n",
])
def test_malformed_requests_get_an_error_answer(imds: ImdsServer, raw: bytes) -> None:
    code = status(exchange(imds, raw))
    assert 400 <= code < 500 or code in (501, 505), code
    still_serving(imds)


def test_ttl_and_length_problems_are_400(imds: ImdsServer) -> None:
    for raw in (b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + b": \xb2\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"):
        assert status(exchange(imds, raw)) == 400


def test_non_ascii_path_is_404_not_a_crash(imds: ImdsServer) -> None:
    answer = exchange(imds, "GET /latest/meta-data/é HTTP/1.1\r\n\r\n".encode())
    assert status(answer) in (401, 404)


def test_a_good_request_after_a_bad_body_on_one_connection(imds: ImdsServer) -> None:
    """A bad Content-Length ends the connection after the 400 (its framing is
    lost), so a request written behind it is not misread."""
    answer = exchange(imds, b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n"
                      b"PUT /latest/api/token HTTP/1.1\r\n" + TTL + b": 60\r\n\r\n")
    assert status(answer) == 400 and answer.count(b"HTTP/1.") == 1
    assert [r.status for r in imds.requests] == [400]
