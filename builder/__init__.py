"""amibake: AMI image builder and cloud-init generator."""

from pathlib import Path

#: The one place the version is written: pyproject.toml reads it from here
#: (`[tool.setuptools.dynamic]`), so asking the installed metadata for it (an
#: import of importlib.metadata and a scan of sys.path, ~50 ms of every
#: command's start) is never needed.
__version__ = "0.1.0"

_PACKAGE = Path(__file__).resolve().parent
#: An installed wheel carries the checkout's cloudinit/ folder as builder/resources/
#: (setup.py maps it); a checkout (or an editable install of one) has no such folder.
_PACKAGED_RESOURCES = _PACKAGE / "resources"

#: The source checkout amibake runs from; None when installed from a wheel.
CHECKOUT: Path | None = None if _PACKAGED_RESOURCES.is_dir() else _PACKAGE.parent
#: cloudinit/: templates, boot scripts and the sample app.
TEMPLATES_DIR = _PACKAGED_RESOURCES if CHECKOUT is None else CHECKOUT / "cloudinit"
#: What `validate` checks when given no path: the checkout's manifests/, or,
#: for an installed amibake, manifests/ of the current directory.
MANIFESTS_DIR = Path("manifests") if CHECKOUT is None else CHECKOUT / "manifests"
