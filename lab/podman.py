"""podman with its CNI backend, run inside a node's namespace: a real libcni client.

Each node gets its own storage, run root and containers.conf naming the node's
CNI config and binary directories, so labs and tests never share podman state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from weft.lab import netns

APPLETS = ("sh", "nc", "ping", "sleep", "ip", "echo", "cat", "hostname", "ifconfig", "route")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def available() -> bool:
    return all(shutil.which(tool) for tool in ("podman", "runc", "busybox"))


def busybox_rootfs(root: Path) -> Path:
    """A directory rootfs with busybox and its applets: an image without a registry."""
    for directory in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox is not installed (apt-get install busybox-static)")
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.is_symlink():
            os.symlink("busybox", link)
    return root


class Podman:
    """`podman` for one node; `network` is the conflist name in `cni_conf_dir`."""

    def __init__(self, node_netns: str, base: Path, cni_conf_dir: Path,
                 cni_bin_dirs: list[str], rootfs: Path, network: str) -> None:
        self.node_netns, self.base, self.rootfs, self.network = node_netns, base, rootfs, network
        base.mkdir(parents=True, exist_ok=True)
        (base / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{cni_conf_dir}"\n'
            f"cni_plugin_dirs = {json.dumps(cni_bin_dirs)}\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'runtime = "runc"\n')
        # podman refuses a run root longer than 50 characters.
        runroot_file = base / "runroot"
        if runroot_file.exists():
            self.runroot = Path(runroot_file.read_text())
        else:
            self.runroot = Path(tempfile.mkdtemp(prefix="weft-podman-", dir="/run"))
            runroot_file.write_text(str(self.runroot))

    def __call__(self, *args: str, check: bool = True) -> str:
        command = [*netns.prefix_command(self.node_netns), "podman",
                   "--root", str(self.base / "root"), "--runroot", str(self.runroot),
                   "--storage-driver", "vfs", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf")}
        proc = subprocess.run(command, env=env, capture_output=True, timeout=180)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed: "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode().strip()

    def run(self, name: str, *command: str, ports: tuple[str, ...] = ()) -> str:
        publish = [arg for port in ports for arg in ("-p", port)]
        return self("run", "-d", "--name", name, "--hostname", name, "--network",
                    self.network, *publish, *ULIMITS, "--rootfs", str(self.rootfs), *command)

    def ip(self, name: str) -> str:
        inspect = json.loads(self("inspect", name))
        return inspect[0]["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def exec_prefix(self, name: str) -> list[str]:
        """The command line that runs a command inside container `name`."""
        return ["env", f"CONTAINERS_CONF={self.base / 'containers.conf'}",
                *netns.prefix_command(self.node_netns), "podman", "--root",
                str(self.base / "root"), "--runroot", str(self.runroot), "--storage-driver",
                "vfs", "exec", name]

    def remove_all(self) -> None:
        self("rm", "-af", "-t", "0", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)
        (self.base / "runroot").unlink(missing_ok=True)
