"""Ruby: Debian packages, or a source tarball built into a prefix (checksum pinned)."""

from __future__ import annotations

from builder.app.rails_build import BUILD_ONLY_PACKAGES
from builder.manifest.model import Manifest, Role
from builder.render.app import own_app
from builder.render.common import SETUP_DIR, manifest_error
from builder.render.fragment import File, Fragment
from builder.render.quoting import sh
from builder.render.templates import render_template

SETUP = f"{SETUP_DIR}/ruby-build.sh"
#: Login shells find a tarball Ruby first (the seed put /opt/ree/bin on PATH in /etc/bashrc).
PROFILE = "/etc/profile.d/amibake-ruby.sh"
BUILD_PACKAGES: tuple[str, ...] = (
    "build-essential", "ca-certificates", "curl", "libreadline-dev", "libssl-dev", "zlib1g-dev",
)


def render(manifest: Manifest, role: Role) -> Fragment:
    ruby = manifest.components.ruby
    if ruby is None:
        raise manifest_error(manifest, f"roles.{role.name}.components", "ruby is not configured")
    if ruby.source == "debian":
        # The team's own app is built at bake time (Bundler, native extensions):
        # the build-only packages are purged from the image after the build.
        extra = ("bundler", *BUILD_ONLY_PACKAGES) if own_app(manifest) else ()
        return Fragment(component="ruby", packages=(*ruby.packages, *extra))
    tarball = ruby.tarball
    if tarball is None:
        raise manifest_error(
            manifest, "components.ruby.source", "source: tarball needs components.ruby.tarball"
        )
    prefix = tarball.prefix.rstrip("/")
    script = render_template(
        "ruby/build.sh.j2",
        url=tarball.url,
        sha256=tarball.sha256.lower(),
        md5=tarball.md5.lower(),
        prefix=prefix,
        version=tarball.version or "(unversioned)",
        stamp=f"{prefix}/.amibake-built",
        gems=ruby.gems,
        configure_flags=tarball.configure_flags,
    )
    return Fragment(
        component="ruby",
        packages=BUILD_PACKAGES,
        files=(File(SETUP, script, mode=0o755),
               File(PROFILE, ("# amibake: the Ruby built from its tarball comes first.\n"
                             f"PATH={sh(prefix + '/bin')}:\"$PATH\"\nexport PATH\n").encode())),
        setup=(SETUP,),
    )
