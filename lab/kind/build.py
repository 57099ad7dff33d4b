"""`weft lab build-kind-image`: a kind node image of the Kubernetes lab's build.

    /var/cache/weft/kubernetes/v<version>/kind/bin      etcd and CoreDNS at kubeadm's versions
    /var/cache/weft/kubernetes/v<version>/kind/images   kubeadm's images; node.tar, the node

The node image itself is in the lab build's podman storage, under image_name(). Every
step is keyed on its inputs, as build-kubernetes is: a second run builds nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from weft.lab.kind import controlplane, nodeimage
from weft.lab.kube import artifacts, components, gobuild, images, layout
from weft.lab.kube.gobuild import Progress


def kind_dir(version: str) -> Path:
    return artifacts.version_dir(version) / "kind"


def build(version: str, progress: Progress) -> str:
    """Build what is missing or stale for a node of Kubernetes `version`; returns the
    node image's name."""
    started = time.monotonic()
    bin_dir = artifacts.build(version, progress)
    target = kind_dir(version)
    env = gobuild.go_env(layout.CACHE)
    built = []
    for component in (components.KIND_ETCD, components.KIND_COREDNS):
        built += [f"{b} {component.version}" for b in
                  gobuild.build(component, target / "bin", layout.CACHE / "work", env, progress)]
    podman = images.Podman(layout.CACHE)
    archives, made = controlplane.build(podman, version, bin_dir, target / "bin",
                                        artifacts.version_dir(version) / "images",
                                        target / "images", progress)
    built += made
    kind_source = gobuild.module_dir(components.KIND.module, components.KIND.version, env)
    built += [nodeimage.build(podman, version, bin_dir, kind_source, archives,
                              target / "images", progress)]
    what = ", ".join(b for b in built if b) or "nothing to build"
    progress(f"kind node image for Kubernetes {version} is ready ({what}; "
             f"{time.monotonic() - started:.0f}s)")
    return nodeimage.image_name(version)
