"""The local IMDS emulator: IMDSv2 token semantics, the tree, faults."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from builder.imds import ImdsConfig, ImdsServer, Outage
from builder.imds.server import MAX_TTL

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmibakeTestKey admin@example"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None,
         ) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=b"" if method == "PUT" else None)
    try:
        with OPENER.open(request, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def token(server: ImdsServer, ttl: str = "60") -> str:
    status, body, headers = call(f"{server.url}/latest/api/token", "PUT",
                                 {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert status == 200, body
    assert headers["X-aws-ec2-metadata-token-ttl-seconds"] == ttl
    return body.decode()


def get(server: ImdsServer, path: str, tok: str | None) -> tuple[int, str]:
    headers = {"X-aws-ec2-metadata-token": tok} if tok else {}
    status, body, _ = call(server.url + path, headers=headers)
    return status, body.decode()


@pytest.fixture
def config() -> ImdsConfig:
    return ImdsConfig(
        instance_id="i-0abc", ami_id="ami-0def", instance_type="t3.micro",
        region="eu-west-1", public_keys=(KEY,), tags={"Role": "web", "Name": "web-1"},
        user_data=b"#cloud-config\n# amibake-role: web\n",
    )


@pytest.fixture
def server(config: ImdsConfig):
    with ImdsServer(config) as imds:
        yield imds


def test_required_tokens_refuse_imdsv1_with_401(server: ImdsServer) -> None:
    assert get(server, "/latest/meta-data/instance-id", None)[0] == 401
    assert get(server, "/latest/meta-data/instance-id", token(server)) == (200, "i-0abc")


def test_optional_tokens_answer_imdsv1(config: ImdsConfig) -> None:
    with ImdsServer(replace(config, require_token=False)) as imds:
        assert get(imds, "/latest/meta-data/instance-id", None) == (200, "i-0abc")
        # a token that is present but wrong is still refused
        assert get(imds, "/latest/meta-data/instance-id", "not-a-token")[0] == 401


@pytest.mark.parametrize("ttl", ["0", "21601", "-5", "abc", ""])
def test_token_ttl_outside_1_to_21600_is_400(server: ImdsServer, ttl: str) -> None:
    status, _, _ = call(f"{server.url}/latest/api/token", "PUT",
                        {"X-aws-ec2-metadata-token-ttl-seconds": ttl} if ttl else {})
    assert status == 400


def test_token_ttl_bounds_are_inclusive(server: ImdsServer) -> None:
    assert token(server, "1")
    assert token(server, str(MAX_TTL))


def test_token_put_with_x_forwarded_for_is_refused(server: ImdsServer) -> None:
    status, _, _ = call(f"{server.url}/latest/api/token", "PUT", {
        "X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.9"})
    assert status == 403


def test_get_on_token_route_is_405(server: ImdsServer) -> None:
    assert call(f"{server.url}/latest/api/token")[0] == 405


class FakeClock:
    """The server's clock, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_expires_after_its_ttl(config: ImdsConfig) -> None:
    clock = FakeClock()
    with ImdsServer(config, clock=clock) as server:
        tok = token(server, "1")
        assert get(server, "/latest/meta-data/ami-id", tok) == (200, "ami-0def")
        clock.now += 0.999
        assert get(server, "/latest/meta-data/ami-id", tok) == (200, "ami-0def")
        clock.now += 0.001
        assert get(server, "/latest/meta-data/ami-id", tok)[0] == 401
        assert get(server, "/latest/meta-data/ami-id", token(server))[0] == 200


def test_token_ttl_cap_and_use_limit_faults(config: ImdsConfig) -> None:
    with ImdsServer(replace(config, token_max_uses=2)) as imds:
        tok = token(imds, "21600")
        assert [get(imds, "/latest/meta-data/ami-id", tok)[0] for _ in range(3)] == [
            200, 200, 401]
    clock = FakeClock()
    with ImdsServer(replace(config, token_ttl_cap=0.5), clock=clock) as imds:
        tok = token(imds, "21600")
        clock.now += 0.4
        assert get(imds, "/latest/meta-data/ami-id", tok)[0] == 200
        clock.now += 0.1
        assert get(imds, "/latest/meta-data/ami-id", tok)[0] == 401


def test_expire_tokens_invalidates_issued_tokens(server: ImdsServer) -> None:
    tok = token(server)
    server.expire_tokens()
    assert get(server, "/latest/meta-data/ami-id", tok)[0] == 401


def test_meta_data_listing_marks_directories(server: ImdsServer) -> None:
    status, body = get(server, "/latest/meta-data/", token(server))
    assert status == 200
    entries = body.split("\n")
    assert not body.endswith("\n")
    assert entries == sorted(entries)
    for leaf in ("ami-id", "ami-launch-index", "instance-id", "instance-type", "hostname",
                 "local-hostname", "local-ipv4", "public-ipv4", "public-hostname", "mac"):
        assert leaf in entries
    for directory in ("block-device-mapping/", "iam/", "network/", "placement/",
                      "public-keys/", "services/", "tags/"):
        assert directory in entries


def test_leaves(server: ImdsServer) -> None:
    tok = token(server)
    expect = {
        "/latest/meta-data/instance-type": "t3.micro",
        "/latest/meta-data/ami-launch-index": "0",
        "/latest/meta-data/local-ipv4": "10.0.2.15",
        "/latest/meta-data/public-ipv4": "192.0.2.10",
        "/latest/meta-data/local-hostname": "ip-10-0-2-15.eu-west-1.compute.internal",
        "/latest/meta-data/placement/availability-zone": "eu-west-1a",
        "/latest/meta-data/placement/region": "eu-west-1",
        "/latest/meta-data/placement/availability-zone-id": "euw1-az1",
        "/latest/meta-data/services/domain": "amazonaws.com",
        "/latest/meta-data/public-keys/": "0=amibake",
        "/latest/meta-data/public-keys/0/": "openssh-key",
        "/latest/meta-data/public-keys/0/openssh-key": KEY,
        "/latest/meta-data/tags/instance/": "Name\nRole",
        "/latest/meta-data/tags/instance/Role": "web",
        "/latest/meta-data/block-device-mapping/": "ami\nephemeral0\nroot",
        "/latest/meta-data/block-device-mapping/ephemeral0": "sdb",
        "/latest/meta-data/mac": "52:54:00:12:34:56",
        "/latest/meta-data/network/interfaces/macs/": "52:54:00:12:34:56/",
        "/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/local-ipv4s": "10.0.2.15",
        "/latest/meta-data/iam/": "info\nsecurity-credentials/",
        "/latest/meta-data/iam/security-credentials/": "amibake-instance",
        "/latest/user-data": "#cloud-config\n# amibake-role: web\n",
        "/latest": "dynamic/\nmeta-data/\nuser-data",
        "/latest/dynamic/instance-identity": "document",
    }
    for path, value in expect.items():
        assert get(server, path, tok) == (200, value), path


def test_directories_answer_with_or_without_trailing_slash(server: ImdsServer) -> None:
    tok = token(server)
    assert get(server, "/latest/meta-data/placement", tok) == get(
        server, "/latest/meta-data/placement/", tok)


def test_fake_role_credentials(server: ImdsServer, config: ImdsConfig) -> None:
    status, body = get(server, "/latest/meta-data/iam/security-credentials/amibake-instance",
                       token(server))
    assert status == 200
    creds = json.loads(body)
    assert creds["Code"] == "Success" and creds["Type"] == "AWS-HMAC"
    assert creds["AccessKeyId"] == config.credentials.access_key_id
    assert creds["SecretAccessKey"] == config.credentials.secret_access_key
    assert creds["Token"] == config.credentials.token


def test_identity_document_is_json_of_the_instance(server: ImdsServer) -> None:
    status, body = get(server, "/latest/dynamic/instance-identity/document", token(server))
    assert status == 200
    doc = json.loads(body)
    assert doc["instanceId"] == "i-0abc"
    assert doc["imageId"] == "ami-0def"
    assert doc["instanceType"] == "t3.micro"
    assert doc["region"] == "eu-west-1"
    assert doc["availabilityZone"] == "eu-west-1a"
    assert doc["privateIp"] == "10.0.2.15"
    assert doc["accountId"] == "123456789012"


@pytest.mark.parametrize("path", [
    "/latest/meta-data/no-such-thing",
    "/latest/meta-data/tags/instance/Missing",
    "/latest/meta-data/instance-id/extra",
    "/latest/meta-data/public-keys/1/openssh-key",
    "/1999-01-01/meta-data/instance-id",
])
def test_unknown_paths_are_404(server: ImdsServer, path: str) -> None:
    assert get(server, path, token(server))[0] == 404


def test_no_user_data_is_404_and_unlisted(config: ImdsConfig) -> None:
    with ImdsServer(replace(config, user_data=b"", tags={}, public_keys=())) as imds:
        tok = token(imds)
        assert get(imds, "/latest/user-data", tok)[0] == 404
        assert get(imds, "/latest", tok) == (200, "dynamic/\nmeta-data/")
        listing = get(imds, "/latest/meta-data/", tok)[1].split("\n")
        assert "tags/" not in listing and "public-keys/" not in listing
        assert get(imds, "/latest/meta-data/tags/instance/Role", tok)[0] == 404


@pytest.mark.parametrize("version", ["2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23"])
def test_dated_versions_cloud_init_asks_for(server: ImdsServer, version: str) -> None:
    tok = token(server)
    assert get(server, f"/{version}/meta-data/instance-id", tok) == (200, "i-0abc")
    assert version in get(server, "/", tok)[1].split("\n")


def test_503_outage_for_the_first_requests(config: ImdsConfig) -> None:
    with ImdsServer(replace(config, outages=(Outage("503", requests=2),))) as imds:
        put = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        assert call(f"{imds.url}/latest/api/token", "PUT", put)[0] == 503
        assert call(f"{imds.url}/latest/api/token", "PUT", put)[0] == 503
        assert get(imds, "/latest/meta-data/instance-id", token(imds)) == (200, "i-0abc")


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_refusing_outage_then_up(config: ImdsConfig) -> None:
    with ImdsServer(replace(config, outages=(Outage("refuse", seconds=0.5),))) as imds:
        assert _refused(imds.url)
        deadline = time.monotonic() + 30
        while _refused(imds.url):
            assert time.monotonic() < deadline, "the service never came up"
            time.sleep(0.05)
        assert get(imds, "/latest/meta-data/instance-id", token(imds)) == (200, "i-0abc")


def test_refusing_forever(config: ImdsConfig) -> None:
    with ImdsServer(replace(config, outages=(Outage("refuse", seconds=math.inf),))) as imds:
        assert _refused(imds.url)


def test_update_serves_a_new_instance(server: ImdsServer) -> None:
    server.update(instance_id="i-0new")
    assert get(server, "/latest/meta-data/instance-id", token(server)) == (200, "i-0new")


def test_requests_are_recorded(server: ImdsServer) -> None:
    tok = token(server)
    get(server, "/latest/meta-data/ami-id", tok)
    records = server.requests
    assert [(r.method, r.path, r.status) for r in records] == [
        ("PUT", "/latest/api/token", 200), ("GET", "/latest/meta-data/ami-id", 200)]
    assert records[1].token == tok


def test_outage_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Outage("refuse", requests=3)
