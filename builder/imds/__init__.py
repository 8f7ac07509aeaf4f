"""A local EC2 instance metadata service (IMDSv2) for VMs and tests.

The server (http.server and friends) is imported on first use, so a command
that only needs `ImdsConfig`'s defaults (the CLI's parser) stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from builder.imds.config import Credentials, ImdsConfig, Outage

if TYPE_CHECKING:
    from builder.imds.server import ImdsServer, RequestRecord

__all__ = ["Credentials", "ImdsConfig", "ImdsServer", "Outage", "RequestRecord"]


def __getattr__(name: str) -> Any:
    if name in ("ImdsServer", "RequestRecord"):
        from builder.imds import server

        return getattr(server, name)
    raise AttributeError(f"module 'builder.imds' has no attribute {name!r}")
