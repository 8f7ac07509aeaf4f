"""Bake + boot: the Rails sample (cloudinit/app-rails) baked by `path:` and booted all-in-one.

The seed manifest (manifests/smallpayroll.yaml: `app.code: {path:
../cloudinit/app-rails}`, Debian's Rails gems and a SECRET_KEY_BASE
reference), in the session's bake (tests/bake_fixture.py `baked_image`, shared
with the boot tests: the app layer runs Bundler frozen --local and
assets:precompile in the image; the compilers are purged), booted all-in-one
under qemu with the IMDS emulator serving the secrets. The role's generic
boot checks pass (services, `/` and `/health` 200 through nginx); then, in
the same VM: `/` is rendered by Rails, a POST through the CSRF form lands in
PostgreSQL (read back with psql), the migration unit ran once and the app
servers after it, SECRET_KEY_BASE is only in the 0600 env file, and the
image holds no compiler, no `.git`, no master key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.store import StoredImage
from builder.vm.accel import detect_accel
from builder.vm.boottest import check_booted_vm, render_identity
from builder.vm.checks import expectations_for, http_get
from builder.vm.imds import imds_server
from builder.vm.qemu import Vm, VmSpec
from builder.vm.ssh import Ssh, generate_key
from tests.bake_fixture import SEED_MANIFEST
from tests.rails_form import new_employee_form, post_employee

pytestmark = [pytest.mark.vm, pytest.mark.bake, pytest.mark.timeout(3600)]

ROLE = "all-in-one"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(SEED_MANIFEST)


def test_the_rails_sample_bakes_and_boots_all_in_one(
        baked_image: StoredImage, manifest: Manifest, tmp_path: Path) -> None:
    image = baked_image
    key = generate_key(tmp_path / "id_ed25519", comment="amibake-rails-test")
    identity = render_identity(manifest, ROLE, key)
    host = manifest.app.server_name
    with imds_server(identity) as imds:
        spec = VmSpec(disk=image.disk_path, imds_port=imds.port,
                      instance_id=identity.instance_id, boot="uefi",
                      instance_type=identity.instance_type, timeout=1800)
        with Vm(spec, tmp_path / "vm", accel=detect_accel()) as vm:
            ssh = Ssh(key, vm.ports.ssh, manifest.image.login_user)
            result = check_booted_vm(vm, ssh, expectations_for(manifest, ROLE), "uefi")
            assert result.ok, result
            # a figure for the log (not asserted): power-on → SSH, → boot finished,
            # → the checks' `/` and `/health` 200 from Rails through nginx
            print(f"rails all-in-one: ssh {result.seconds_to_ssh:.1f} s, "
                  f"ready {result.seconds_to_ready:.1f} s, "
                  f"checks done {vm.elapsed():.1f} s ({vm.accel.name})")
            port = vm.ports.http

            # GET / rendered by Rails (its layout, the CSRF meta tag), through nginx
            index = http_get(port, "/", host_header=host, timeout=60)
            assert index.status == 200 and "nginx" in index.headers.get("server", "")
            assert b'name="csrf-token"' in index.body and b"<h1>Employees</h1>" in index.body
            assert http_get(port, "/health", host_header=host).status == 200

            # the CSRF form: its token and session cookie, then the POST
            form = new_employee_form(port, host)
            posted = post_employee(port, host, form, "Ada from the form", "42.50")
            assert posted.status in (302, 303), posted.body[:500]
            forged = post_employee(port, host, form, "Ada from the form", "42.50",
                                   token="x" + form.token)
            assert forged.status == 422
            rows = ssh.run("sudo -n -u postgres psql -XAtq -d payroll_prod -c "
                           "'SELECT name, hourly_rate FROM employees ORDER BY id'").stdout
            assert rows.strip().splitlines() == ["Ada from the form|42.50"]
            # TLS with this instance's own key: the image carries no snakeoil
            # pair (it would be every instance's), the setup made one at boot
            tls = ssh.run("sudo -n -u postgres psql -XAtq -c 'SHOW ssl' -c 'SHOW ssl_key_file' "
                          "&& sudo -n stat -c %Y /etc/ssl/private/ssl-cert-snakeoil.key "
                          "&& cat /proc/stat | awk '$1 == \"btime\" { print $2 }'").stdout.split()
            assert tls[:2] == ["on", "/etc/ssl/private/ssl-cert-snakeoil.key"], tls
            assert int(tls[2]) >= int(tls[3]), f"snakeoil key older than this boot: {tls}"

            # the migration ran once, before the app servers
            journal = ssh.run("sudo -n journalctl -b -o cat -u amibake-migrate.service").stdout
            assert journal.count("running db:migrate") == 1, journal
            assert "migrated: 1 migration(s) applied" in journal
            order = ssh.run("systemctl show -p Requires -p After amibake-app@8000.service").stdout
            assert "amibake-migrate.service" in order

            # the secret: only in the 0600 env file, never in user-data or the image
            secret = identity.secrets["/smallpayroll/secret-key-base"]
            env_file = ssh.run("sudo -n stat -c '%a %U' /etc/amibake/app.env && "
                               "sudo -n grep -c SECRET_KEY_BASE= /etc/amibake/app.env").stdout
            assert env_file.split() == ["600", "root", "1"]
            assert secret.encode() not in identity.user_data
            hits = ssh.run(f"sudo -n grep -rlsF {secret} /srv /etc /usr/lib/amibake "
                           "/var/lib/cloud || true").stdout.split()
            assert hits == ["/etc/amibake/app.env"]

            # no compiler, no .git, no master key, gems frozen
            ssh_out = ssh.run("for c in cc gcc g++ make; do command -v $c || true; done; "
                              "dpkg -l build-essential gcc 2>/dev/null | grep '^ii' || true; "
                              "sudo -n find / -xdev \\( -name .git -o -name master.key \\) "
                              "-print").stdout
            assert ssh_out.strip() == "", ssh_out
            bundle = ssh.run("cat /srv/app/.bundle/config").stdout
            assert 'BUNDLE_FROZEN: "true"' in bundle
            assert ssh.run("ls /srv/app/public/assets").stdout.strip()
