"""What the local instance metadata service answers: one frozen dataclass.

`ImdsConfig` describes one EC2 instance as its metadata shows it (ids,
addresses, placement, keys, tags, user-data, the instance role's
credentials, the secrets its role may read) plus the service's own
behaviour: whether IMDSv2 tokens are required, and faults injected for tests
(outages, short token lifetimes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ACCOUNT_ID = "123456789012"


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials of the instance's IAM role, as IMDS hands them out.

    The defaults are fakes for local VMs; the emulator's secrets API checks
    SigV4 signatures made with them. Tests against moto pass real moto
    (assumed-role) credentials instead.
    """

    access_key_id: str = "ASIAAMIBAKELOCAL0001"
    secret_access_key: str = "amibake/local/fake/secret/key/0000000000"
    token: str = "amibake-local-session-token"
    expiration: str = "2099-01-01T00:00:00Z"


@dataclass(frozen=True)
class Outage:
    """A fault: the service is unreachable, or answers 503, for a while.

    - `mode="refuse"`: for `seconds` after start the port is bound but not
      listening, so connections are refused (`math.inf`: never comes up).
    - `mode="503"`: the first `requests` requests, or every request during
      the first `seconds`, get 503 Service Unavailable.
    """

    mode: Literal["refuse", "503"]
    seconds: float = 0.0
    requests: int = 0

    def __post_init__(self) -> None:
        if self.mode == "refuse" and self.requests:
            raise ValueError("a refusing outage is measured in seconds, not requests")
        if self.seconds < 0 or self.requests < 0:
            raise ValueError("outage length must not be negative")


def _default_bdm() -> dict[str, str]:
    return {"ami": "/dev/xvda", "root": "/dev/xvda", "ephemeral0": "sdb"}


@dataclass(frozen=True)
class ImdsConfig:
    """One instance's metadata and the service's behaviour.

    `mac` defaults to qemu's address for a guest's first NIC: cloud-init
    derives its network configuration from network/interfaces/macs/<mac>/,
    so a VM served by this emulator must use the same MAC.
    """

    instance_id: str = "i-0123456789abcdef0"
    ami_id: str = "ami-0123456789abcdef0"
    ami_launch_index: int = 0
    instance_type: str = "t3.small"
    region: str = "us-east-1"
    availability_zone: str = ""  # default: region + "a"
    local_ipv4: str = "10.0.2.15"
    subnet_cidr: str = "10.0.2.0/24"
    public_ipv4: str = "192.0.2.10"  # "" → no public address paths
    mac: str = "52:54:00:12:34:56"
    key_name: str = "amibake"
    public_keys: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    user_data: bytes = b""  # empty → /latest/user-data answers 404
    block_device_mapping: dict[str, str] = field(default_factory=_default_bdm)
    iam_role: str = "amibake-instance"  # "" → no iam/ in the tree
    credentials: Credentials = field(default_factory=Credentials)
    secrets: dict[str, str] = field(default_factory=dict)
    account_id: str = ACCOUNT_ID
    require_token: bool = True  # HttpTokens=required (IMDSv2 only)
    token_ttl_cap: float | None = None  # fault: tokens live at most this long
    token_max_uses: int | None = None  # fault: a token expires after N requests
    outages: tuple[Outage, ...] = ()
    pending_time: str = "2026-11-25T12:00:00Z"

    @property
    def zone(self) -> str:
        return self.availability_zone or f"{self.region}a"

    @property
    def local_hostname(self) -> str:
        ip = self.local_ipv4.replace(".", "-")
        if self.region == "us-east-1":
            return f"ip-{ip}.ec2.internal"
        return f"ip-{ip}.{self.region}.compute.internal"

    @property
    def public_hostname(self) -> str:
        if not self.public_ipv4:
            return ""
        ip = self.public_ipv4.replace(".", "-")
        if self.region == "us-east-1":
            return f"ec2-{ip}.compute-1.amazonaws.com"
        return f"ec2-{ip}.{self.region}.compute.amazonaws.com"

    def key_names(self) -> tuple[str, ...]:
        """The key pair name IMDS lists for each public key, by index."""
        return tuple(
            self.key_name if i == 0 else f"{self.key_name}-{i}"
            for i in range(len(self.public_keys))
        )
