"""A local EC2 instance metadata service (IMDSv2) for VMs and tests."""

from builder.imds.config import Credentials, ImdsConfig, Outage
from builder.imds.server import ImdsServer, RequestRecord

__all__ = ["Credentials", "ImdsConfig", "ImdsServer", "Outage", "RequestRecord"]
