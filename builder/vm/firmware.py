"""Firmware for a VM: OVMF (UEFI) from Debian's ovmf package, or SeaBIOS.

UEFI needs a writable variable store per VM: a copy of OVMF_VARS_4M.fd in
the VM's work directory (boot entries written by one VM never leak into the
next). Legacy BIOS is qemu's default SeaBIOS and needs no arguments.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.errors import UserError

BootMode = Literal["uefi", "bios"]

OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = "OVMF_CODE_4M.fd"
OVMF_VARS = "OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class Firmware:
    """The firmware files a VM boots with (none for BIOS)."""

    mode: BootMode
    code: Path | None = None
    vars: Path | None = None  # the per-VM writable copy

    def qemu_args(self) -> list[str]:
        if self.mode == "bios":
            return []
        assert self.code is not None and self.vars is not None
        return [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={self.code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
        ]


def prepare_firmware(mode: BootMode, workdir: Path, ovmf_dir: Path = OVMF_DIR) -> Firmware:
    """Firmware for `mode`; for UEFI copies the variable store into `workdir`."""
    if mode == "bios":
        return Firmware("bios")
    code, template = ovmf_dir / OVMF_CODE, ovmf_dir / OVMF_VARS
    for path in (code, template):
        if not path.is_file():
            raise UserError(
                f"UEFI firmware not found: {path}",
                hint="install Debian's ovmf package (`make setup`)",
            )
    vars_copy = workdir / "OVMF_VARS.fd"
    shutil.copyfile(template, vars_copy)
    return Firmware("uefi", code=code, vars=vars_copy)
