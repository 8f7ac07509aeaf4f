"""Packaging glue that pyproject.toml cannot express: the checkout's cloudinit/
folder (templates, boot scripts, the sample app) ships inside the wheel as
builder/resources/, where `builder.TEMPLATES_DIR` finds it once installed.

cloudinit/ itself never becomes an importable package (it would shadow
cloud-init's own); here it is only the source of builder/resources/'s files,
each of its folders declared as a data-only package.
"""

from pathlib import Path

from setuptools import find_packages, setup

RESOURCES = {
    ".".join(("builder.resources", *d.relative_to("cloudinit").parts)): ["*", ".*"]
    for d in sorted({Path("cloudinit"), *Path("cloudinit").rglob("*")})
    if d.is_dir() and d.name != "__pycache__"
}

setup(
    packages=[*find_packages(include=["builder", "builder.*"]), *RESOURCES],
    package_dir={"builder.resources": "cloudinit"},
    package_data={"builder": ["py.typed"], **RESOURCES},
    exclude_package_data={name: ["*.pyc"] for name in RESOURCES},
)
