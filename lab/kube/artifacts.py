"""`weft lab build-kubernetes`: every binary and image the Kubernetes lab runs, in the cache.

    /var/cache/weft/kubernetes/v<version>/bin      the binaries
    /var/cache/weft/kubernetes/v<version>/images   OCI archives: pause, CoreDNS, agnhost, weft
    /var/cache/weft/kubernetes/current             -> v<default version>

Go's module and build caches make a rebuild after a change cheap; each binary and
image carries a key of its inputs, so a second run builds nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from weft.lab.kube import components, gobuild, images, layout

Progress = Callable[[str], None]


def version_dir(version: str) -> Path:
    return layout.CACHE / f"v{version}"


def build(version: str, progress: Progress) -> Path:
    """Build what is missing or stale for Kubernetes `version`; returns its bin dir."""
    for tool in ("go", "podman", "debootstrap", "gcc"):
        if shutil.which(tool) is None:
            raise gobuild.BuildError(f"{tool} is not installed: run ./install.sh --test "
                                     "(it installs what the Kubernetes lab builds with)")
    started = time.monotonic()
    target = version_dir(version)
    bin_dir = target / "bin"
    env = gobuild.go_env(layout.CACHE)
    kubernetes = components.kubernetes(version)
    ldflags = gobuild.kubernetes_ldflags(
        version, gobuild.module_time(kubernetes.module, kubernetes.version, env))
    built = []
    for component in components.all_components(version):
        built += gobuild.build(component, bin_dir, layout.CACHE / "work", env, progress,
                               ldflags if component.module == kubernetes.module else "")
    source = gobuild.module_dir(kubernetes.module, kubernetes.version, env)
    built += images.build_all(layout.CACHE, target, source, progress)
    if version == components.KUBERNETES_VERSION:
        _point_current(target)
    what = f"built {', '.join(built)}" if built else "nothing to build"
    progress(f"Kubernetes {version} is ready in {target} ({what}; "
             f"{time.monotonic() - started:.0f}s)")
    return bin_dir


def _point_current(target: Path) -> None:
    current = layout.CACHE / "current"
    if current.is_symlink() and os.readlink(current) == target.name:
        return
    temporary = layout.CACHE / ".current.new"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name)
    os.replace(temporary, current)
