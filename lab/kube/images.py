"""OCI image archives for the Kubernetes lab, built here because none can be pulled.

podman builds them in its own storage under the cache (the machine's podman store is
left alone), with the settings this machine needs in lab/kube/containers.conf (runc:
crun fails on hybrid cgroups; ulimits no higher than the machine's). Build steps run
on the host network, so no netavark chains are made, and get the machine's apt
sources and CA bundle mounted for their downloads, never copied into an image.

Each archive is rebuilt only when what goes into it changes (a key beside it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from weft.lab.kube import components
from weft.lab.kube.gobuild import BuildError, run_step
from weft.lab.podman import busybox_rootfs

Progress = Callable[[str], None]
HERE = Path(__file__).parent
REPO = HERE.parent.parent
DEBIAN_BASE = "docker.io/library/debian:bookworm-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Inside a build step: the machine's CA bundle (its HTTPS proxy's CA included) beside
# the image's own, and a pip.conf that points pip at it. Both are mounts of the step,
# so neither ends up in the image.
BUILD_CA = "/run/weft-build/ca.crt"
PIP_CONF = "/etc/pip.conf"
APT_SETTINGS = ("/etc/apt/apt.conf.d/99artifact-registry",)
# What agnhost's own image adds to its base (test/images/agnhost/Dockerfile), from Debian.
AGNHOST_PACKAGES = ("bind9-dnsutils", "curl", "netcat-openbsd", "iproute2", "iperf", "bash",
                    "socat", "iputils-ping", "util-linux")


class Podman:
    """podman with the lab build's own storage and configuration."""

    def __init__(self, cache: Path) -> None:
        self.root = cache / "podman"
        storage = self.root / "storage.conf"
        if not storage.exists():
            storage.parent.mkdir(parents=True, exist_ok=True)
            storage.write_text(f'[storage]\ndriver = "overlay"\n'
                               f'graphroot = "{self.root / "storage"}"\n'
                               f'runroot = "{self.root / "run"}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(storage)}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise BuildError(f"podman {args[0]} failed: {result.stderr.strip()[-800:]}")
        return result

    def build(self, tag: str, context: Path, containerfile: Path, what: str,
              progress: Progress) -> None:
        pip_conf = self.root / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {BUILD_CA}\n")
        mounts = [f"--volume={CA_BUNDLE}:{BUILD_CA}:ro", f"--volume={pip_conf}:{PIP_CONF}:ro"]
        mounts += [f"--volume={p}:{p}:ro" for p in APT_SETTINGS if os.path.exists(p)]
        run_step(["podman", "build", "--network=host", "--pull=never", *mounts,
                  "-t", tag, "-f", str(containerfile), str(context)],
                 context, self.env, what, progress)

    def save(self, tag: str, archive: Path) -> None:
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self("save", "--format", "oci-archive", "-o", str(partial), tag)
        partial.rename(archive)


def build_all(cache: Path, version_dir: Path, k8s_source: Path,
              progress: Progress) -> list[str]:
    """pause, CoreDNS, agnhost and weft's image, as OCI archives in version_dir/images;
    returns the names of those it had to build."""
    podman = Podman(cache)
    images = version_dir / "images"
    bin_dir = version_dir / "bin"
    images.mkdir(parents=True, exist_ok=True)
    debian_base(podman, cache, progress)
    built = [
        _pause(podman, images, k8s_source, progress),
        from_binaries(podman, images, "coredns", components.COREDNS_IMAGE, COREDNS,
                      {"coredns": bin_dir / "coredns"}, progress),
        _agnhost(podman, images, bin_dir, k8s_source, progress),
        _busybox(podman, images, progress),
        from_binaries(podman, images, "nginx", components.NGINX_IMAGE, NGINX, {}, progress),
        from_binaries(podman, images, "glibc-dns-testing", components.GLIBC_DNS_IMAGE,
                      GLIBC_DNS, {"coredns": bin_dir / "coredns"}, progress),
        _weft(podman, images, progress)]
    return [name for name in built if name]


def archive_names(images: Path) -> list[Path]:
    return sorted(images.glob("*.tar"))


def debian_base(podman: Podman, cache: Path, progress: Progress) -> None:
    """A minimal Debian 12 made with debootstrap, imported as the base the Dockerfile
    names (debian:bookworm-slim), since no registry can be reached."""
    if podman("image", "exists", DEBIAN_BASE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory(dir=cache) as work:
        rootfs = Path(work) / "rootfs"
        run_step(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                 cache, podman.env, "making a Debian 12 base with debootstrap", progress)
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
                       check=True)
        podman("import", "--change", 'CMD ["bash"]', str(tarball), DEBIAN_BASE)


def _pause(podman: Podman, images: Path, k8s_source: Path, progress: Progress) -> str:
    source = k8s_source / "build" / "pause" / "linux" / "pause.c"
    key = _digest([source.read_bytes()])

    def prepare(context: Path) -> None:
        run_step(["gcc", "-Os", "-static", "-DVERSION=" + components.PAUSE_IMAGE.split(":")[1],
                  "-o", str(context / "pause"), str(source)], context, os.environ,
                 "compiling pause", progress)
        subprocess.run(["strip", str(context / "pause")], check=True)

    return build_image(podman, images, "pause", components.PAUSE_IMAGE, key,
                       "FROM scratch\nCOPY pause /pause\nUSER 65535:65535\n"
                       'ENTRYPOINT ["/pause"]\n', prepare, progress)


def _agnhost(podman: Podman, images: Path, bin_dir: Path, k8s_source: Path,
             progress: Progress) -> str:
    porter = k8s_source / "test" / "images" / "agnhost" / "porter"
    files = {"agnhost": bin_dir / "agnhost", "coredns": bin_dir / "coredns",
             "localhost.crt": porter / "localhost.crt", "localhost.key": porter / "localhost.key"}
    containerfile = (
        f"FROM {DEBIAN_BASE}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends "
        f"{' '.join(AGNHOST_PACKAGES)} && rm -rf /var/lib/apt/lists/* \\\n"
        " && useradd -u 1000 user-defined-in-image \\\n"
        " && groupadd -g 50000 group-defined-in-image \\\n"
        " && usermod -aG group-defined-in-image user-defined-in-image \\\n"
        " && mkdir /uploads\n"
        "COPY localhost.crt localhost.key coredns agnhost /\n"
        "RUN ln -s agnhost /agnhost-2\n"
        "EXPOSE 80 8080 8081 9376 5000\n"
        'ENTRYPOINT ["/agnhost"]\nCMD ["pause"]\n')
    return from_binaries(podman, images, "agnhost", components.AGNHOST_IMAGE, containerfile,
                         files, progress)


# CoreDNS's own image: the binary alone.
COREDNS = 'FROM scratch\nCOPY coredns /coredns\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]\n'


# nginx from Debian on the same base, serving its welcome page on port 80 as the
# upstream image (nginx:1.27-alpine) does.
NGINX = (f"FROM {DEBIAN_BASE}\n"
         "RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \\\n"
         " && rm -rf /var/lib/apt/lists/* \\\n"
         " && ln -sf /dev/stdout /var/log/nginx/access.log \\\n"
         " && ln -sf /dev/stderr /var/log/nginx/error.log\n"
         "EXPOSE 80\nSTOPSIGNAL SIGQUIT\n"
         'CMD ["nginx", "-g", "daemon off;"]\n')


# What test/images/glibc-dns-testing is: Debian 12 with dnsutils, and CoreDNS at /.
GLIBC_DNS = (f"FROM {DEBIAN_BASE}\n"
             "RUN apt-get update && apt-get install -y --no-install-recommends dnsutils \\\n"
             " && rm -rf /var/lib/apt/lists/*\n"
             "COPY coredns /coredns\n")


def _busybox(podman: Podman, images: Path, progress: Progress) -> str:
    """busybox with its applets, as upstream's image (FROM busybox) is: Debian's static
    busybox, the one the netns lab's podman pods run."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    key = _digest([busybox.read_bytes()])

    def prepare(context: Path) -> None:
        root = busybox_rootfs(context / "rootfs")
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            link = root / "bin" / applet
            if not link.exists() and not link.is_symlink():
                link.symlink_to("busybox")

    return build_image(podman, images, "busybox", components.BUSYBOX_IMAGE, key,
                       'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n', prepare, progress)


def _weft(podman: Podman, images: Path, progress: Progress) -> str:
    """weft's own image, from the project's Dockerfile, tagged as manifests/weft.yaml
    names it (weft:dev is docker.io/library/weft:dev to containerd)."""
    archive = images / "weft.tar"
    key = _weft_key()
    if _fresh(archive, key):
        return ""
    podman.build(components.WEFT_IMAGE, REPO, REPO / "Dockerfile",
                 "building weft's image from the Dockerfile", progress)
    podman.save(components.WEFT_IMAGE, archive)
    _mark(archive, key)
    return "weft image"


def weft_image_current(images: Path) -> bool:
    """Whether the weft image in `images` was built from the source as it is now."""
    return _fresh(images / "weft.tar", _weft_key())


def _weft_key() -> str:
    """What goes into weft's image: the Dockerfile and its build context."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=REPO, capture_output=True,
                             check=True).stdout.split(b"\0")
    ignored = _dockerignore(REPO / ".dockerignore")
    files = sorted(f.decode() for f in tracked if f and (REPO / f.decode()).is_file()
                   and not ignored(f.decode()))
    return _digest([(REPO / "Dockerfile").read_bytes(),
                    *(f.encode() + b"\0" + (REPO / f).read_bytes() for f in files)])


def _dockerignore(path: Path) -> Callable[[str], bool]:
    """Whether the build context leaves a file out (the patterns weft's .dockerignore
    uses: names and globs, matched against the path and each of its directories)."""
    patterns = [line.strip().rstrip("/") for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(name: str) -> bool:
        parts = name.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or
                   fnmatch.fnmatch(parts[i], pattern.removeprefix("**/"))
                   for pattern in patterns for i, prefix in enumerate(prefixes))
    return ignored


def from_binaries(podman: Podman, images: Path, name: str, tag: str, containerfile: str,
                  files: dict[str, Path], progress: Progress) -> str:
    key = _digest([containerfile.encode(), *(p.read_bytes() for p in files.values())])

    def prepare(context: Path) -> None:
        for target, source in files.items():
            (context / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / target)

    return build_image(podman, images, name, tag, key, containerfile, prepare, progress)


def build_image(podman: Podman, images: Path, name: str, tag: str, key: str,
                containerfile: str, prepare: Callable[[Path], None], progress: Progress) -> str:
    """Build and save one image unless its archive is fresh; returns what it built. The
    key of its inputs is the image's with its tag."""
    archive = images / f"{name}.tar"
    key = _digest([key.encode(), tag.encode()])
    if _fresh(archive, key):
        return ""
    with tempfile.TemporaryDirectory(dir=images.parent) as work:
        context = Path(work)
        prepare(context)
        (context / "Containerfile").write_text(containerfile)
        podman.build(tag, context, context / "Containerfile", f"building the {tag} image",
                     progress)
    podman.save(tag, archive)
    _mark(archive, key)
    return f"{name} image"


def _digest(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _fresh(archive: Path, key: str) -> bool:
    stamp = archive.with_suffix(".json")
    try:
        return archive.exists() and json.loads(stamp.read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def _mark(archive: Path, key: str) -> None:
    archive.with_suffix(".json").write_text(json.dumps({"key": key}) + "\n")
