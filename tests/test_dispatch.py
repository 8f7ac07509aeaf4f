"""The boot dispatcher (cloudinit/boot/amibake-dispatch) against the IMDS emulator.

The script runs as the instance runs it (as shipped: amibake_imds.py inlined,
docstrings stripped; its own #!/usr/bin/python3, stdlib only) with a root prefix
for its files and a fake `systemctl` that records its argv: the one stand-in,
since the qemu boot tests exercise real systemd.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from builder.imds import ImdsConfig, ImdsServer, Outage
from tests.shipped_boot import shipped

ROOT = Path(__file__).resolve().parent.parent
BOOT = ROOT / "cloudinit" / "boot"
DISPATCH = shipped("amibake-dispatch")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmibakeTestKey admin@example"
SETUP_DIR = "/usr/lib/amibake/setup"
ROLES = {
    "web": {"steps": [{"setup": [f"{SETUP_DIR}/web.sh"], "services": ["nginx.service"]}]},
    "app": {"steps": [{"setup": [f"{SETUP_DIR}/app.sh"],
                       "services": ["amibake-app@8000.service", "amibake-app@8001.service"]}]},
    "db": {"steps": [{"setup": [f"{SETUP_DIR}/db.sh", f"{SETUP_DIR}/db-2.sh"],
                      "services": ["postgresql@15-main.service"]}]},
}
ALL_SERVICES = sorted({s for r in ROLES.values() for step in r["steps"] for s in step["services"]})
OTHERS_OF_WEB = ["amibake-app@8000.service", "amibake-app@8001.service",
                 "postgresql@15-main.service"]

FAKE_SYSTEMCTL = """#!/usr/bin/python3
import json, os, sys
with open(os.environ["FAKE_SYSTEMCTL_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("FAKE_SYSTEMCTL_EXIT", "0")))
"""
SETUP = """#!/bin/sh
echo "$(basename "$0") $AMIBAKE_ROLE $AMIBAKE_INSTANCE_ID" >> "$AMIBAKE_ROOT/var/log/setup.log"
"""


@dataclass
class Instance:
    """A fake instance root with roles.json, a login user, units, scripts."""

    root: Path
    systemctl_log: Path
    bin_dir: Path

    def calls(self) -> list[list[str]]:
        if not self.systemctl_log.exists():
            return []
        return [json.loads(line) for line in self.systemctl_log.read_text().splitlines()]

    def setup_log(self) -> list[str]:
        path = self.root / "var/log/setup.log"
        return path.read_text().splitlines() if path.exists() else []

    def state(self, name: str) -> str | None:
        path = self.root / "var/lib/amibake" / name
        return path.read_text().strip() if path.exists() else None

    @property
    def authorized_keys(self) -> Path:
        return self.root / "home/admin/.ssh/authorized_keys"

    def run(self, imds_url: str, *extra: str, timeout_s: float = 20,
            env: dict[str, str] | None = None, stderr_file: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AMIBAKE_", "JOURNAL_STREAM", "PYTHON"))}
        full_env.update({
            "AMIBAKE_IMDS_URL": imds_url,
            "AMIBAKE_ROOT": str(self.root),
            "AMIBAKE_SYSTEMCTL": str(self.bin_dir / "systemctl"),
            "AMIBAKE_IMDS_TIMEOUT": str(timeout_s),
            "FAKE_SYSTEMCTL_LOG": str(self.systemctl_log),
        })
        full_env.update(env or {})
        if stderr_file is not None:
            with stderr_file.open("w") as err:
                return subprocess.run([str(DISPATCH), *extra], env=full_env, text=True,
                                      stdout=subprocess.PIPE, stderr=err, timeout=120)
        return subprocess.run([str(DISPATCH), *extra], env=full_env, capture_output=True,
                              text=True, timeout=120)


@pytest.fixture
def inst(tmp_path: Path) -> Instance:
    root = tmp_path / "root"
    (root / "etc/amibake").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "admin:x:1000:1000:Admin,,,:/home/admin:/bin/bash\n")
    (root / "home/admin").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    (root / "etc/amibake/roles.json").write_text(json.dumps({
        "version": 1, "login_user": "admin", "roles": ROLES,
        "all_services": ALL_SERVICES, "secrets": {},
    }))
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("nginx.service", "amibake-app@.service", "postgresql@.service"):
        (units / unit).write_text("[Service]\nExecStart=/bin/true\n")
    setup = root / "usr/lib/amibake/setup"
    setup.mkdir(parents=True)
    for name in ("web.sh", "app.sh", "db.sh", "db-2.sh"):
        (setup / name).write_text(SETUP)
        (setup / name).chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    return Instance(root=root, systemctl_log=tmp_path / "systemctl.log", bin_dir=bin_dir)


def started(*services: str) -> list[list[str]]:
    """The systemctl calls that start a role's services (one step): queued,
    waited for, then enabled."""
    return [["start", "--no-block", *services], ["start", *services],
            ["--no-reload", "enable", *services]]


def md(**changes: object) -> ImdsConfig:
    base = ImdsConfig(instance_id="i-0aaa000000000001", public_keys=(KEY,))
    return replace(base, **changes)  # type: ignore[arg-type]


def assert_nothing_changed(inst: Instance) -> None:
    assert inst.calls() == []
    assert inst.setup_log() == []
    assert inst.state("dispatched") is None and inst.state("role") is None
    assert not inst.authorized_keys.exists()


# ------------------------------------------------------------ choosing a role


def test_role_from_tag(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.calls() == [["disable", "--now", *OTHERS_OF_WEB], *started("nginx.service")]
    assert inst.setup_log() == ["web.sh web i-0aaa000000000001"]
    assert inst.state("dispatched") == "i-0aaa000000000001"
    assert inst.state("role") == "web"
    assert "instance tag Role=web" in proc.stderr


def test_role_from_user_data(inst: Instance) -> None:
    ud = b"#cloud-config\n# amibake-role: db\npackages: [postgresql]\n"
    with ImdsServer(md(user_data=ud)) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.calls() == [
        ["disable", "--now", "amibake-app@8000.service", "amibake-app@8001.service",
         "nginx.service"],
        *started("postgresql@15-main.service")]
    # setup scripts run in the order roles.json lists them
    assert inst.setup_log() == ["db.sh db i-0aaa000000000001", "db-2.sh db i-0aaa000000000001"]
    assert "user-data line '# amibake-role: db'" in proc.stderr


def _multipart(role: str) -> bytes:
    outer = MIMEMultipart()
    outer.attach(MIMEText("#!/bin/sh\necho hello\n", "x-shellscript"))
    cloud_config = MIMEText(f"#cloud-config\n# amibake-role: {role}\nruncmd: []\n",
                            "cloud-config")
    outer.attach(cloud_config)
    return outer.as_bytes()


@pytest.mark.parametrize("encoding", ["multipart", "gzip", "gzip+multipart"])
def test_role_from_gzipped_or_multipart_user_data(inst: Instance, encoding: str) -> None:
    if encoding == "multipart":
        ud = _multipart("app")
    elif encoding == "gzip":
        ud = gzip.compress(b"#cloud-config\n# amibake-role: app\n")
    else:
        ud = gzip.compress(_multipart("app"))
    with ImdsServer(md(user_data=ud)) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.calls()[-3:] == started("amibake-app@8000.service", "amibake-app@8001.service")
    assert inst.state("role") == "app"


def test_base64_mime_part_is_decoded(inst: Instance) -> None:
    outer = MIMEMultipart()
    part = MIMEText("#cloud-config\n# amibake-role: web\n", "cloud-config", "utf-8")
    outer.attach(part)  # utf-8 MIMEText parts are base64-encoded
    assert b"amibake-role" not in outer.as_bytes()
    with ImdsServer(md(user_data=outer.as_bytes())) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.state("role") == "web"


def test_user_data_wins_over_the_tag(inst: Instance) -> None:
    with ImdsServer(md(user_data=b"#cloud-config\n# amibake-role: app\n",
                       tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.state("role") == "app"
    assert "warning: user-data says role 'app' but the Role tag says 'web'" in proc.stderr


def test_no_role_is_a_loud_failure(inst: Instance) -> None:
    with ImdsServer(md(user_data=b"#cloud-config\npackages: [nginx]\n")) as imds:
        proc = inst.run(imds.url)
        url = imds.url
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("amibake-dispatch: error: no role for this instance")
    assert f"{url}/latest/user-data: no such line" in line
    assert f"{url}/latest/meta-data/tags/instance/Role: absent" in line
    assert_nothing_changed(inst)


def test_no_user_data_and_no_tags(inst: Instance) -> None:
    with ImdsServer(md()) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "/latest/user-data: absent" in proc.stderr
    assert_nothing_changed(inst)


def test_unknown_role_is_a_loud_failure(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "mail"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    roles_json = inst.root / "etc/amibake/roles.json"
    assert (f"amibake-dispatch: error: unknown role 'mail' (from instance tag Role=mail): "
            f"{roles_json} defines app, db, web") in proc.stderr
    assert_nothing_changed(inst)


def test_conflicting_role_lines_fail(inst: Instance) -> None:
    ud = b"#cloud-config\n# amibake-role: web\n# amibake-role: db\n"
    with ImdsServer(md(user_data=ud)) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "several roles (db, web)" in proc.stderr
    assert_nothing_changed(inst)


def test_missing_roles_json_fails(inst: Instance) -> None:
    (inst.root / "etc/amibake/roles.json").unlink()
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "roles.json is missing" in proc.stderr
    assert_nothing_changed(inst)


# ----------------------------------------------------- checks before changes


def test_missing_service_unit_fails_before_any_change(inst: Instance) -> None:
    (inst.root / "lib/systemd/system/nginx.service").unlink()
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "role 'web' needs nginx.service but no unit file is installed" in proc.stderr
    assert_nothing_changed(inst)


def test_missing_setup_script_fails_before_any_change(inst: Instance) -> None:
    (inst.root / "usr/lib/amibake/setup/db-2.sh").unlink()
    with ImdsServer(md(tags={"Role": "db"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "setup script /usr/lib/amibake/setup/db-2.sh of role 'db' is missing" in proc.stderr
    assert_nothing_changed(inst)


def test_missing_login_user_fails(inst: Instance) -> None:
    (inst.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "login user 'admin'" in proc.stderr
    assert_nothing_changed(inst)


def test_failing_setup_script_stops_before_services_start(inst: Instance) -> None:
    (inst.root / "usr/lib/amibake/setup/web.sh").write_text("#!/bin/sh\nexit 3\n")
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "setup script /usr/lib/amibake/setup/web.sh of role 'web' failed with exit code 3" \
        in proc.stderr
    assert not [c for c in inst.calls() if "nginx.service" in c and "disable" not in c]
    assert inst.state("dispatched") is None


def test_failing_later_step_stops_the_services_this_run_started(inst: Instance) -> None:
    roles_json = inst.root / "etc/amibake/roles.json"
    doc = json.loads(roles_json.read_text())
    doc["roles"]["all"] = {"steps": [
        {"setup": [f"{SETUP_DIR}/app.sh"], "services": ["amibake-app@8000.service"]},
        {"setup": [f"{SETUP_DIR}/db.sh"], "services": ["postgresql@15-main.service"]}]}
    roles_json.write_text(json.dumps(doc))
    (inst.root / "usr/lib/amibake/setup/db.sh").write_text("#!/bin/sh\nexit 4\n")
    with ImdsServer(md(tags={"Role": "all"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "setup script /usr/lib/amibake/setup/db.sh of role 'all' failed with exit code 4" \
        in proc.stderr
    assert inst.calls()[-2:] == [["start", "--no-block", "amibake-app@8000.service"],
                                 ["stop", "amibake-app@8000.service"]]
    assert inst.state("dispatched") is None


def test_steps_must_be_lists_of_strings(inst: Instance) -> None:
    roles_json = inst.root / "etc/amibake/roles.json"
    doc = json.loads(roles_json.read_text())
    doc["roles"]["web"] = {"steps": [{"setup": "/usr/lib/amibake/setup/web.sh"}]}
    roles_json.write_text(json.dumps(doc))
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 1
    assert "role 'web' needs \"steps\"" in proc.stderr
    assert_nothing_changed(inst)


def test_failing_systemctl_is_a_failure(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url, env={"FAKE_SYSTEMCTL_EXIT": "1"})
    assert proc.returncode == 1
    assert "disable --now" in proc.stderr and "failed with exit code 1" in proc.stderr
    assert inst.state("dispatched") is None


def test_other_roles_services_not_installed_are_not_disabled(inst: Instance) -> None:
    (inst.root / "lib/systemd/system/postgresql@.service").unlink()
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.calls()[0] == ["disable", "--now", "amibake-app@8000.service",
                               "amibake-app@8001.service"]
    assert "postgresql@15-main.service (another role's) is not installed" in proc.stderr


# ------------------------------------------------------------- IMDS behaviour


def test_imds_down_then_up(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"},
                       outages=(Outage("refuse", seconds=1.5),))) as imds:
        proc = inst.run(imds.url, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert "IMDS not ready (ConnectionRefusedError" in proc.stderr
    assert inst.state("role") == "web"


def test_imds_503_then_answers(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"}, outages=(Outage("503", requests=3),))) as imds:
        proc = inst.run(imds.url, timeout_s=60)
        statuses = [r.status for r in imds.requests]
    assert proc.returncode == 0, proc.stderr
    assert statuses[:4] == [503, 503, 503, 200]
    assert inst.state("role") == "web"


def test_imds_down_forever_fails_after_the_bound(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"},
                       outages=(Outage("refuse", seconds=math.inf),))) as imds:
        proc = inst.run(imds.url, timeout_s=2)
        url = imds.url
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"amibake-dispatch: error: instance metadata service {url} did "
                           "not answer /latest/meta-data/instance-id: gave up after")
    assert "in 2 s (last error: ConnectionRefusedError" in line
    assert_nothing_changed(inst)


def test_token_expiry_mid_run_fetches_a_new_token(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"}, token_max_uses=2)) as imds:
        proc = inst.run(imds.url)
        records = imds.requests
    assert proc.returncode == 0, proc.stderr
    puts = [r for r in records if r.method == "PUT"]
    assert len(puts) >= 2
    assert any(r.status == 401 for r in records)
    assert all(r.token for r in records if r.method == "GET")  # IMDSv2 only
    assert inst.state("role") == "web"
    assert inst.authorized_keys.read_text() == KEY + "\n"


def test_imdsv2_token_put_carries_the_ttl_header(inst: Instance) -> None:
    # The emulator refuses a token PUT without a valid TTL header (400) and
    # every GET without a token (401): success shows both were sent.
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
        records = imds.requests
    assert proc.returncode == 0, proc.stderr
    assert records[0].method == "PUT" and records[0].status == 200
    assert not any(r.status in (400, 401) for r in records)


# ------------------------------------------------------ idempotence and keys


def test_second_boot_of_the_same_instance_is_a_no_op(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        first = inst.run(imds.url)
        calls, setup = inst.calls(), inst.setup_log()
        keys = inst.authorized_keys.read_text()
        second = inst.run(imds.url)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert inst.calls() == calls and inst.setup_log() == setup
    assert inst.authorized_keys.read_text() == keys
    assert "role web already applied to i-0aaa000000000001; nothing to do" in second.stderr


def test_a_new_instance_id_reapplies(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        assert inst.run(imds.url).returncode == 0
        imds.update(instance_id="i-0bbb000000000002", tags={"Role": "app"})
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert inst.state("dispatched") == "i-0bbb000000000002"
    assert inst.state("role") == "app"
    assert inst.calls()[-4:] == [
        ["disable", "--now", "nginx.service", "postgresql@15-main.service"],
        *started("amibake-app@8000.service", "amibake-app@8001.service")]
    assert inst.setup_log()[-1] == "app.sh app i-0bbb000000000002"
    # the same key is not added twice
    assert inst.authorized_keys.read_text() == KEY + "\n"


def test_force_reapplies_on_the_same_instance(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        inst.run(imds.url)
        proc = inst.run(imds.url, "--force")
    assert proc.returncode == 0
    assert len(inst.setup_log()) == 2


def test_authorized_keys_written_for_the_login_user(inst: Instance) -> None:
    ssh = inst.root / "home/admin/.ssh"
    ssh.mkdir(mode=0o755)
    (ssh / "authorized_keys").write_text("ssh-rsa AAAAB3existing other@example\n")
    (ssh / "authorized_keys").chmod(0o644)
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    keys = inst.authorized_keys
    assert keys.read_text() == "ssh-rsa AAAAB3existing other@example\n" + KEY + "\n"
    st = keys.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1000, 1000)
    st = ssh.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o700, 1000, 1000)
    assert not [p for p in ssh.iterdir() if p.name.startswith(".authorized_keys.")]


def test_no_public_key_leaves_authorized_keys_alone(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"}, public_keys=())) as imds:
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert not inst.authorized_keys.exists()
    assert "no public key in instance metadata" in proc.stderr


# ------------------------------------------------------------------ logging


def test_journal_priority_prefixes_when_stderr_is_the_journal(
    inst: Instance, tmp_path: Path,
) -> None:
    stderr_file = tmp_path / "journal"
    stderr_file.touch()
    st = stderr_file.stat()
    with ImdsServer(md(tags={"Role": "mail"})) as imds:
        proc = inst.run(imds.url, stderr_file=stderr_file,
                        env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    lines = stderr_file.read_text().splitlines()
    assert proc.returncode == 1
    assert lines[-1].startswith("<3>amibake-dispatch: unknown role 'mail'")
    assert all(line.startswith(("<3>", "<4>", "<6>")) for line in lines)


def test_plain_lines_when_stderr_is_not_the_journal(inst: Instance) -> None:
    with ImdsServer(md(tags={"Role": "web"})) as imds:
        proc = inst.run(imds.url, env={"JOURNAL_STREAM": "1:1"})
    assert proc.returncode == 0
    assert all(line.startswith("amibake-dispatch: ") for line in proc.stderr.splitlines())


# --------------------------------------------------------- the files as such


def test_scripts_use_only_the_standard_library() -> None:
    for script in ("amibake-dispatch", "amibake-secret"):
        for path in (BOOT / script, shipped(script)):
            assert os.access(path, os.X_OK), f"{script} must be executable"
            assert path.read_text().startswith("#!/usr/bin/python3\n")
        tree = ast.parse(shipped(script).read_text())  # as shipped: one self-contained file
        modules = {alias.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


def _defined(source: str) -> list[str]:
    """Top-level functions and classes."""
    return [n.name for n in ast.parse(source).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def test_the_imds_client_has_one_home_and_ships_in_both_scripts() -> None:
    """amibake_imds.py is the one IMDS client: the scripts' sources import it,
    each shipped script carries it once (inlined), and both run."""
    module = _defined((BOOT / "amibake_imds.py").read_text())
    assert {"Imds", "Log", "user_data_markers", "load_roles_json"} <= set(module)
    for script in ("amibake-dispatch", "amibake-secret"):
        source = (BOOT / script).read_text()
        assert not set(_defined(source)) & set(module), "a second copy of the IMDS client"
        assert "from amibake_imds import" in source
        shipped_text = shipped(script).read_text()
        assert "amibake_imds import" not in shipped_text
        defined = _defined(shipped_text)
        assert all(defined.count(name) == 1 for name in module), defined
        proc = subprocess.run([str(shipped(script)), "--help"], capture_output=True, text=True,
                              timeout=60, cwd="/")
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


def _cloud_init_units() -> Path:
    """cloud-init's systemd units from Debian's package (extracted, not installed)."""
    cache = ROOT / ".cache" / "cloud-init"
    units = cache / "root" / "lib" / "systemd" / "system"
    if not (units / "cloud-init.service").exists():
        cache.mkdir(parents=True, exist_ok=True)
        if not list(cache.glob("cloud-init_*.deb")):
            subprocess.run(["apt-get", "download", "cloud-init"], cwd=cache, check=True,
                           capture_output=True)
        deb = sorted(cache.glob("cloud-init_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "root")], check=True)
    return units


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Syntax, the ExecStart binary, and no ordering cycle with cloud-init's units."""
    root = tmp_path / "root"
    (root / "usr/lib/amibake").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    for unit in _cloud_init_units().glob("cloud-*"):
        shutil.copy2(unit, root / "usr/lib/systemd/system" / unit.name)
    (root / "usr/bin/cloud-init").write_text("#!/bin/sh\n")
    (root / "usr/bin/cloud-init").chmod(0o755)
    shutil.copy2(DISPATCH, root / "usr/lib/amibake/amibake-dispatch")  # as shipped
    shutil.copy2(BOOT / "amibake-dispatch.service", root / "etc/systemd/system")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           "amibake-dispatch.service", "cloud-init.service",
                           "cloud-config.service", "cloud-final.service"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _unit_settings(path: Path) -> dict[str, dict[str, str]]:
    """section → key → value; a key given on several lines (After=, Before=)
    has its values joined with spaces, as systemd reads list settings."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current[key] = f"{current[key]} {value}".strip() if key in current else value
    return sections


def test_unit_file_orders_the_dispatcher_for_first_boot() -> None:
    unit = _unit_settings(BOOT / "amibake-dispatch.service")
    after = set(unit["Unit"]["After"].split())
    # early: once cloud-init's local stage has configured the network, in
    # parallel with cloud-init.service (not after it, nor after sysinit.target,
    # which cloud-init.service precedes: hence no default dependencies)
    assert {"local-fs.target", "cloud-init-local.service", "networking.service"} <= after
    assert not after & {"cloud-init.service", "network-online.target", "sysinit.target",
                        "basic.target"}
    assert "Wants" not in unit["Unit"] and "Requires" not in unit["Unit"]
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert {"multi-user.target", "shutdown.target"} <= set(unit["Unit"]["Before"].split())
    assert unit["Unit"]["Conflicts"] == "shutdown.target"
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Service"]["ExecStart"] == "/usr/lib/amibake/amibake-dispatch"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_setup_script_reads_a_secret_with_amibake_secret(inst: Instance) -> None:
    """At boot a role's setup reads its secrets through amibake-secret (roles.json
    "secrets"), from the endpoint named in user-data: the local VM flow."""
    roles_json = inst.root / "etc/amibake/roles.json"
    doc = json.loads(roles_json.read_text())
    doc["secrets"] = {"db_password": {"store": "ssm", "name": "/smallpayroll/db-password"}}
    roles_json.write_text(json.dumps(doc))
    shutil.copy2(shipped("amibake-secret"), inst.root / "usr/lib/amibake/amibake-secret")
    (inst.root / "usr/lib/amibake/setup/db.sh").write_text(
        '#!/bin/sh\nset -e\numask 077\n'
        '"$AMIBAKE_ROOT/usr/lib/amibake/amibake-secret" db_password'
        ' > "$AMIBAKE_ROOT/var/log/db-password"\n')
    with ImdsServer(md(secrets={"/smallpayroll/db-password": "pg-Secret-1"})) as imds:
        imds.update(user_data=(f"#cloud-config\n# amibake-role: db\n"
                               f"# amibake-secrets-endpoint: {imds.url}\n").encode())
        proc = inst.run(imds.url)
    assert proc.returncode == 0, proc.stderr
    assert (inst.root / "var/log/db-password").read_text() == "pg-Secret-1"
    assert inst.state("role") == "db"


def test_metadata_mode_prints_one_value_for_setup_scripts(inst: Instance) -> None:
    bdm = {"ami": "/dev/xvda", "ephemeral0": "sdb"}
    with ImdsServer(replace(md(), block_device_mapping=bdm)) as imds:
        found = inst.run(imds.url, "--metadata", "block-device-mapping/ephemeral0")
        absent = inst.run(imds.url, "--metadata", "block-device-mapping/ephemeral1")
        assert all(r.token for r in imds.requests if r.method == "GET")
    assert (found.returncode, found.stdout) == (0, "sdb\n")
    assert (absent.returncode, absent.stdout) == (1, "")
    assert_nothing_changed(inst)
