"""The images kubeadm deploys on a kind node, built here from the same Kubernetes tree.

kind's kubeadm starts the control plane as static pods and kube-proxy as a DaemonSet
from the images `kubeadm config images list` names; a node has to hold each of them
under that name, because none can be pulled. The binaries are the lab's own (one
build of 1.37.2), except etcd and CoreDNS, which kubeadm pins older than the lab's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from weft.lab.kube import components, images
from weft.lab.kube.gobuild import BuildError, Progress

# Debian's iptables and conntrack, which kube-proxy's iptables mode runs.
KUBE_PROXY = (f"FROM {images.DEBIAN_BASE}\n"
              "RUN apt-get update && apt-get install -y --no-install-recommends iptables \\\n"
              "    conntrack && rm -rf /var/lib/apt/lists/*\n"
              "COPY kube-proxy /usr/local/bin/kube-proxy\n")


def _static(binary: str) -> str:
    """A control-plane binary alone, on PATH as in upstream's images (kubeadm's pods
    name the command, not its path)."""
    return (f"FROM scratch\nCOPY {binary} /usr/local/bin/{binary}\n"
            "ENV PATH=/usr/local/bin:/usr/bin:/bin\n"
            f'ENTRYPOINT ["/usr/local/bin/{binary}"]\n')


def kubeadm_images(bin_dir: Path, version: str) -> list[str]:
    """What this build's kubeadm deploys for Kubernetes `version`."""
    listed = subprocess.run([str(bin_dir / "kubeadm"), "config", "images", "list",
                             "--kubernetes-version", f"v{version}"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise BuildError(f"failed to list kubeadm's images: {listed.stderr.strip()}")
    return listed.stdout.split()


def build(podman: images.Podman, version: str, bin_dir: Path, kind_bin: Path,
          lab_images: Path, target: Path, progress: Progress) -> tuple[list[Path], list[str]]:
    """Every image kubeadm asks for, as OCI archives in `target`: returns the archives
    and the names of those it had to build."""
    registry = "registry.k8s.io"
    recipes = {f"{registry}/{name}:v{version}": (name, _static(name), {name: bin_dir / name})
               for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    recipes[f"{registry}/kube-proxy:v{version}"] = (
        "kube-proxy", KUBE_PROXY, {"kube-proxy": bin_dir / "kube-proxy"})
    recipes[f"{registry}/etcd:{components.KIND_ETCD.version.lstrip('v')}-0"] = (
        "etcd", _static("etcd"), {"etcd": kind_bin / "etcd"})
    recipes[f"{registry}/coredns/coredns:{components.KIND_COREDNS.version}"] = (
        "coredns", images.COREDNS, {"coredns": kind_bin / "coredns"})
    wanted = kubeadm_images(bin_dir, version)
    target.mkdir(parents=True, exist_ok=True)
    archives, built = [], []
    for image in wanted:
        if image == components.PAUSE_IMAGE:
            archives.append(lab_images / "pause.tar")
            continue
        if image not in recipes:
            raise BuildError(f"kubeadm {version} deploys {image}, which this build does not "
                             f"make (it makes {', '.join(sorted(recipes))})")
        name, containerfile, files = recipes[image]
        built.append(images.from_binaries(podman, target, name, image, containerfile, files,
                                          progress))
        archives.append(target / f"{name}.tar")
    return archives, [name for name in built if name]
