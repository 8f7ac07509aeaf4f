"""amibake: AMI image builder and cloud-init generator."""

from importlib import metadata as _metadata
from pathlib import Path

try:
    __version__ = _metadata.version("amibake")
except _metadata.PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+checkout"

#: The checkout (or installed tree) root: holds cloudinit/ and manifests/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "cloudinit"
MANIFESTS_DIR = PROJECT_ROOT / "manifests"
