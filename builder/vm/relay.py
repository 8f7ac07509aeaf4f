"""Relay stdin/stdout to a TCP port on loopback: one process per connection.

qemu's `guestfwd=tcp:IP:PORT-cmd:CMD` starts CMD for every connection the
guest opens to IP:PORT and wires the connection to its stdin/stdout. This
relays those bytes to amibake's IMDS emulator. Stdlib only, no imports from
amibake, so it starts fast. Usage: python -m builder.vm.relay PORT [HOST]
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def relay(port: int, host: str = "127.0.0.1", stdin: int = 0, stdout: int = 1) -> None:
    sock = socket.create_connection((host, port), timeout=30)
    sock.settimeout(None)

    def upstream() -> None:  # guest → emulator
        with contextlib.suppress(OSError):
            while data := os.read(stdin, 65536):
                sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while data := sock.recv(65536):  # emulator → guest
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view):]
    except OSError:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    relay(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1")
