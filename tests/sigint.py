"""Ctrl-C for a child a test interrupts, whatever the test run inherited.

A background job of a non-interactive shell (`make test &`, a CI step
started that way) runs with SIGINT ignored, and every child inherits that
through exec: Python then installs no KeyboardInterrupt handler, and a test
that sends SIGINT to a child waits for nothing. A child that a test stops
with SIGINT is started with `preexec_fn=default_sigint`.
"""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """In the child, before exec: SIGINT's default disposition (Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
