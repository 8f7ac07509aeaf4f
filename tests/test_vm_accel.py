"""Accelerator choice: KVM only with vmx/svm and without the paravirtual kvm_pvm."""

from __future__ import annotations

from builder.vm.accel import KVM_ARGS, TCG_ARGS, choose_accel, cpu_has_virtualization

INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse vmx sse2 avx\n\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm sse2 lm\n\n"
NONE = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor avx\n\n"
# "vmx" inside another word or another field must not count
TRICKY = "model name\t: vmx svm edition\nflags\t\t: fpu vmxnet svmlike\n"

MODULES_PLAIN = "kvm_intel 376832 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n"
MODULES_PVM = "kvm_pvm 45056 0 - Live 0x0\nkvm 1142784 1 kvm_pvm, Live 0x0\n"


def test_flags_are_read_from_the_flags_line_only() -> None:
    assert cpu_has_virtualization(INTEL)
    assert cpu_has_virtualization(AMD)
    assert not cpu_has_virtualization(NONE)
    assert not cpu_has_virtualization(TRICKY)


def test_kvm_with_hardware_virtualization() -> None:
    for cpuinfo in (INTEL, AMD):
        accel = choose_accel(cpuinfo, MODULES_PLAIN)
        assert accel.name == "kvm"
        assert accel.args == KVM_ARGS


def test_tcg_without_vmx_or_svm_even_with_dev_kvm() -> None:
    accel = choose_accel(NONE, MODULES_PLAIN, dev_kvm=True)
    assert accel.name == "tcg"
    assert accel.args == ("-accel", "tcg,thread=multi", "-cpu", "max")
    assert "vmx" in accel.reason


def test_tcg_when_kvm_is_paravirtual() -> None:
    assert choose_accel(INTEL, MODULES_PVM).name == "tcg"
    # /proc/modules may be absent (no module support): /sys/module tells
    accel = choose_accel(INTEL, "", sys_module_names=frozenset({"kvm", "kvm_pvm"}))
    assert accel.args == TCG_ARGS
    assert "kvm_pvm" in accel.reason


def test_tcg_without_dev_kvm() -> None:
    assert choose_accel(INTEL, MODULES_PLAIN, dev_kvm=False).name == "tcg"
