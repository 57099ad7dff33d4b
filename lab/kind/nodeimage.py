"""The kind node image, assembled the way kind's own build does it, without pulling.

kind's node image is its base image (images/base in the kind module: systemd units,
the kubelet drop-ins, containerd's config, the entrypoint) plus kubelet, kubeadm and
kubectl in /usr/bin, /kind/version, and kubeadm's images imported into containerd's
k8s.io namespace, pinned (pkg/build/nodeimage). `kind build node-image` fetches its
base and those images from registries, so this build takes kind's files from the kind
module's sources instead, the binaries from the Kubernetes lab's build, Debian's
packages on the debootstrap base, and imports the archives built here. Like kind's,
the result is one squashed layer (the archives it imported are not in it).
"""

from __future__ import annotations

from pathlib import Path

from weft.lab.kube import components, images
from weft.lab.kube.gobuild import Progress

# What kind's base image installs (images/base/Dockerfile), less what only network
# storage and rootless nodes use, plus Debian's runc and the CNI plugins kind ships
# (loopback, portmap for weft's conflist, host-local, ptp).
PACKAGES = ("systemd", "conntrack", "iptables", "nftables", "iproute2", "ethtool",
            "util-linux", "mount", "kmod", "libseccomp2", "pigz", "bash", "ca-certificates",
            "curl", "jq", "procps", "runc", "containernetworking-plugins")
CNI_PLUGINS = ("host-local", "loopback", "ptp", "portmap")
RUNTIME_BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2", "crictl")
KUBE_BINARIES = ("kubelet", "kubeadm", "kubectl")


def image_name(version: str) -> str:
    return f"localhost/weft/kind-node:v{version}"


def containerfile(version: str, archives: list[str]) -> str:
    """The node image's build: kind's base steps, then its node-image steps."""
    packages = " ".join(PACKAGES)
    plugins = " ".join(f"/usr/lib/cni/{p}" for p in CNI_PLUGINS)
    preload = " ".join(f"/kind/preload/{a}" for a in archives)
    return f"""FROM {images.DEBIAN_BASE} AS build
COPY kind-files/ /
RUN chmod -R u=rwX,go=rX /kind /usr/local/bin /LICENSES /etc/containerd /etc/crictl.yaml \\
      /etc/default/kubelet /etc/sysctl.d /etc/systemd/system \\
 && chmod 0755 /usr/local/bin/* /kind/bin/* \\
 && DEBIAN_FRONTEND=noninteractive clean-install {packages} \\
 && mkdir -p /opt/cni/bin && cp {plugins} /opt/cni/bin/ \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
    /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
    /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
 && ln -s /usr/lib/systemd/systemd /sbin/init
COPY bin/runtime/ /usr/local/bin/
COPY bin/kube/ /usr/bin/
RUN ctr oci spec | jq '.hooks.createContainer += [{{"path": "/kind/bin/mount-product-files.sh"}}] \\
    | del(.process.rlimits)' > /etc/containerd/cri-base.json \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests \\
 && echo "v{version}" > /kind/version
# The sandbox image is the pause this build made. restrict_oom_score_adj keeps pods'
# scores at or above containerd's, as kind does in a user namespace: a host without
# CAP_SYS_RESOURCE cannot lower them. failCgroupV1 false lets kubelet start on a
# cgroup v1 host (kind's kubeadm config leaves it at kubelet's default, true).
RUN sed -i -e 's#sandbox_image = .*#sandbox_image = "{components.PAUSE_IMAGE}"#' \\
      -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' \\
      /etc/containerd/config.toml \\
 && sed -i 's#^KUBELET_EXTRA_ARGS=.*#& --fail-cgroupv1=false#' /etc/default/kubelet
COPY preload/ /kind/preload/
RUN containerd > /dev/null 2>&1 & pid=$! \\
 && for i in $(seq 50); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.2; done \\
 && for archive in {preload}; do \\
      ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \\
        --all-platforms --no-unpack --digests "$archive" || exit 1; done \\
 && ctr --namespace=k8s.io images list -q \\
 && kill $pid && rm -rf /kind/preload

FROM scratch
COPY --from=build / /
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
"""


def build(podman: images.Podman, version: str, bin_dir: Path, kind_source: Path,
          archives: list[Path], target: Path, progress: Progress) -> str:
    """Build the node image into podman's storage (and an archive of it in `target`)
    unless both are current; returns what it built."""
    base = kind_source / "images" / "base" / "files"
    files = {f"kind-files/{f.relative_to(base)}": f for f in sorted(base.rglob("*"))
             if f.is_file()}
    files |= {f"bin/runtime/{b}": bin_dir / b for b in RUNTIME_BINARIES}
    files |= {f"bin/kube/{b}": bin_dir / b for b in KUBE_BINARIES}
    files |= {f"preload/{a.name}": a for a in archives}
    name = image_name(version)
    built = images.from_binaries(podman, target, "node", name,
                                 containerfile(version, [a.name for a in archives]), files,
                                 progress)
    if podman("image", "exists", name, check=False).returncode != 0:
        progress(f"loading {name} from its archive")
        podman("load", "-i", str(target / "node.tar"))
    return built
