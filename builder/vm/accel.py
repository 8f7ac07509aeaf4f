"""Choose qemu's accelerator: KVM only where the CPU really offers it.

A /dev/kvm is not enough: some hosts expose a paravirtual KVM (`kvm_pvm`)
on which Debian kernels die early (emulation failures on cmpxchg16b and
xrstor). KVM is used when /proc/cpuinfo shows vmx or svm, /dev/kvm exists,
and the kvm_pvm module is not loaded; otherwise TCG with every vCPU on its
own host thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TCG_ARGS: tuple[str, ...] = ("-accel", "tcg,thread=multi", "-cpu", "max")
KVM_ARGS: tuple[str, ...] = ("-accel", "kvm", "-cpu", "host")


@dataclass(frozen=True)
class Accel:
    """The accelerator chosen, its qemu arguments, and why."""

    name: Literal["kvm", "tcg"]
    args: tuple[str, ...]
    reason: str


def cpu_has_virtualization(cpuinfo: str) -> bool:
    """True when any `flags` line of /proc/cpuinfo lists vmx (Intel) or svm (AMD)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and {"vmx", "svm"} & set(value.split()):
            return True
    return False


def kvm_is_paravirtual(modules: str, sys_module_names: frozenset[str] = frozenset()) -> bool:
    """True when the kvm_pvm module is loaded (from /proc/modules text or /sys/module)."""
    if "kvm_pvm" in sys_module_names:
        return True
    return any(re.match(r"kvm_pvm\s", line) for line in modules.splitlines())


def choose_accel(
    cpuinfo: str, modules: str, *, sys_module_names: frozenset[str] = frozenset(),
    dev_kvm: bool = True,
) -> Accel:
    """The decision, from the texts of /proc/cpuinfo and /proc/modules."""
    if not cpu_has_virtualization(cpuinfo):
        return Accel("tcg", TCG_ARGS, "the CPU shows neither vmx nor svm")
    if kvm_is_paravirtual(modules, sys_module_names):
        return Accel("tcg", TCG_ARGS, "/dev/kvm is the paravirtual kvm_pvm")
    if not dev_kvm:
        return Accel("tcg", TCG_ARGS, "/dev/kvm is missing or not writable")
    return Accel("kvm", KVM_ARGS, "hardware virtualization with /dev/kvm")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def detect_accel() -> Accel:
    """Look at this host. AMIBAKE_ACCEL=tcg forces TCG (never forces KVM)."""
    if os.environ.get("AMIBAKE_ACCEL") == "tcg":
        return Accel("tcg", TCG_ARGS, "AMIBAKE_ACCEL=tcg")
    try:
        sys_modules = frozenset(os.listdir("/sys/module"))
    except OSError:
        sys_modules = frozenset()
    return choose_accel(
        _read(Path("/proc/cpuinfo")),
        _read(Path("/proc/modules")),
        sys_module_names=sys_modules,
        dev_kvm=os.access("/dev/kvm", os.R_OK | os.W_OK),
    )
