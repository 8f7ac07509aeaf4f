"""End to end: the baked image boots by itself in every role and passes its checks.

One run over every role of the seed manifest: UEFI (OVMF) per role, legacy
BIOS (SeaBIOS) once; IMDS emulator behind 169.254.169.254, SMBIOS "Amazon
EC2", real cloud-init picking the Ec2 datasource, the dispatcher applying the
role. Uses the session's baked image (fixture `baked_image`, tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.vm.boottest import RoleBootResult, run_boot_tests

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(ROOT / "manifests" / "smallpayroll.yaml")


@pytest.fixture(scope="module")
def boot_results(baked_image: Any, manifest: Manifest,
                 tmp_path_factory: pytest.TempPathFactory) -> list[RoleBootResult]:
    workdir = tmp_path_factory.mktemp("boottest")
    results = run_boot_tests(baked_image.disk_path, manifest, list(manifest.roles),
                             workdir=workdir, bios_once=True)
    # a passing VM leaves nothing behind: no overlay, no logs, no key
    assert list(workdir.iterdir()) == []
    return results


def _by_boot(results: list[RoleBootResult]) -> dict[tuple[str, str], RoleBootResult]:
    return {(r.role, r.boot): r for r in results}


def test_every_role_boots_with_uefi_and_one_with_bios(
    boot_results: list[RoleBootResult], manifest: Manifest,
) -> None:
    roles = list(manifest.roles)
    assert [(r.role, r.boot) for r in boot_results] == \
        [(r, "uefi") for r in roles] + [(roles[0], "bios")]
    assert all(r.ok for r in boot_results)
    assert len({r.instance_id for r in boot_results}) == len(boot_results)


def test_checks_run_per_role(boot_results: list[RoleBootResult]) -> None:
    names = {key: {c.name for c in r.checks} for key, r in _by_boot(boot_results).items()}
    base = {"role applied", "services", "cloud-init config valid, sudo quiet"}
    assert names[("web", "uefi")] == base | {"http", "maintenance 503"}
    assert names[("app", "uefi")] == base | {"app servers listening"}
    assert names[("db", "uefi")] == base | {"postgresql data on instance storage"}
    assert names[("all-in-one", "uefi")] == base | {
        "http", "maintenance 503", "app servers listening",
        "postgresql data on instance storage"}


def test_details_show_what_was_seen(boot_results: list[RoleBootResult]) -> None:
    by = _by_boot(boot_results)

    def detail(role: str, check: str) -> str:
        return next(c.detail for c in by[(role, "uefi")].checks if c.name == check)

    assert detail("db", "role applied") == "/var/lib/amibake/role = db"
    assert "postgresql@15-main.service" in detail("db", "services").split(";")[0]
    assert "nginx.service" in detail("db", "services").split(";")[1]
    assert "data_directory = /mnt/" in detail("db", "postgresql data on instance storage")
    # split web role: static page from nginx, app path 502/504 (no app servers here)
    web_http = detail("web", "http")
    assert "GET /404.html 200" in web_http and ("GET /health 502" in web_http
                                                 or "GET /health 504" in web_http)
    full = detail("all-in-one", "http")
    assert "GET / 200" in full and "GET /health 200" in full
    assert "round-trips through PostgreSQL" in full
    assert "503 with Retry-After 300" in detail("all-in-one", "maintenance 503")
