"""Manifests: YAML → checked, frozen dataclasses (see model.py for the settings)."""

from builder.manifest.bump import bump_version
from builder.manifest.loader import load_manifest, load_manifest_text
from builder.manifest.model import Manifest, Role, SecretRef

__all__ = [
    "Manifest", "Role", "SecretRef", "bump_version", "load_manifest", "load_manifest_text",
]
