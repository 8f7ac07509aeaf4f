"""Baking: root filesystem layers (mmdebstrap), a cache of them, the bootable disk."""
