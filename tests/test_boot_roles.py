"""End to end: the baked image boots by itself in every role and passes its checks.

One run over every role of the seed manifest: UEFI (OVMF) per role, legacy
BIOS (SeaBIOS) once; IMDS emulator behind 169.254.169.254, SMBIOS "Amazon
EC2", real cloud-init picking the Ec2 datasource, the dispatcher applying the
role. Uses the session's baked image (fixture `baked_image`, tests/conftest.py):
the seed runs the Rails sample. Each role boots ALONE, so the app role has no
database: its correct behaviour is that amibake-migrate waits for one (its
journal says so once), the app servers, which Require the migration, stay
down, and the dispatcher is still waiting for them (the boot does not
finish). The app role serving through a database is tests/test_vm_stack.py
(web → app → db VMs); the all-in-one here serves Rails through its own
PostgreSQL (`/health` answers 200 only when the database does).
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
    assert names[("app", "uefi")] == {
        "role being applied", "cloud-init config valid, sudo quiet",
        "migration waits for the database", "app servers down"}
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
    # the app role alone: the migration waits for a database, the app servers are down
    assert "journal: amibake-migrate: waiting for the database (" in detail(
        "app", "migration waits for the database")
    assert "nothing listens on 8000, 8001, 8002" in detail("app", "app servers down")
    assert "/var/lib/amibake/role not written yet" in detail("app", "role being applied")
    # all-in-one: Rails through nginx; its /health is 200 only when PostgreSQL answers
    # (the CSRF form's POST read back with psql: tests/test_vm_rails.py, same image)
    full = detail("all-in-one", "http")
    assert full == "GET / 200, GET /health 200"
    assert "503 with Retry-After 300" in detail("all-in-one", "maintenance 503")
