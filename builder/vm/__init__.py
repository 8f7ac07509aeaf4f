"""Local VMs that look like EC2: boot tests of baked images and local launch.

Modules: accel (KVM or TCG), firmware (OVMF / SeaBIOS), qemu (one VM),
relay (guestfwd ↔ IMDS emulator), imds + metadata (what the VM is told),
ssh, checks (per-role expectations), boottest (`run_boot_tests`), launch +
supervise (background local instances). Kept import-free: `python -m
builder.vm.relay` runs once per metadata connection and must start fast.
"""
