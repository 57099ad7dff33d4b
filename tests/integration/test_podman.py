"""A real container runtime: podman's CNI backend runs busybox containers on weft."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from weft.agent.install import conflist
from weft.lab import netns, probe

pytestmark = [pytest.mark.integration, pytest.mark.podman]

if not (shutil.which("podman") and shutil.which("runc") and shutil.which("busybox")):
    pytestmark.append(pytest.mark.skip(reason="needs podman, runc and busybox-static"))

CLIENT_ADDRESS, NODE_UPLINK = "198.18.0.2", "198.18.0.1"


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory rootfs holding busybox and its applets: a container image without a registry."""
    root = tmp_path_factory.mktemp("busybox-rootfs")
    for directory in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / directory).mkdir()
    shutil.copy(shutil.which("busybox"), root / "bin" / "busybox")
    for applet in ("sh", "nc", "ping", "sleep", "ip", "echo", "cat", "hostname"):
        os.symlink("busybox", root / "bin" / applet)
    return root


class Podman:
    """podman run inside the node's namespace, with its own storage and CNI config."""

    def __init__(self, node, rootfs: Path) -> None:
        self.node, self.rootfs, self.base = node, rootfs, node.root / "podman"
        # podman refuses a runroot path longer than 50 characters.
        self.runroot = Path(tempfile.mkdtemp(prefix=f"{node.name}-", dir="/run"))
        netd = self.base / "net.d"
        netd.mkdir(parents=True)
        config = conflist(1450, datastore="local", datastorePath=str(node.datastore_path),
                          stateDir=str(node.state_dir), nodeName=node.name,
                          socket=str(node.socket),
                          ipam={"pools": [{"cidr": "10.246.0.0/16", "blockSize": 26}]})
        config["name"] = "weft-test"
        (netd / "weft-test.conflist").write_text(json.dumps(config))
        (self.base / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{netd}"\n'
            f'cni_plugin_dirs = ["{node.cni_bin}", "/usr/lib/cni"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'runtime = "runc"\n')

    def __call__(self, *args: str, check: bool = True) -> str:
        command = [*netns.prefix_command(self.node.name), "podman",
                   "--root", str(self.base / "root"), "--runroot", str(self.runroot),
                   "--storage-driver", "vfs", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf")}
        proc = subprocess.run(command, env=env, capture_output=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr.decode()}")
        return proc.stdout.decode().strip()

    def run(self, name: str, *command: str, ports: tuple[str, ...] = ()) -> str:
        publish = [arg for port in ports for arg in ("-p", port)]
        return self("run", "-d", "--name", name, "--network", "weft-test", *publish,
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    "--rootfs", str(self.rootfs), *command)

    def ip(self, name: str) -> str:
        inspect = json.loads(self("inspect", name))
        return inspect[0]["NetworkSettings"]["Networks"]["weft-test"]["IPAddress"]

    def cleanup(self) -> None:
        self("rm", "-af", "-t", "0", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)


@pytest.fixture
def podman(node, busybox_rootfs):
    runtime = Podman(node, busybox_rootfs)
    try:
        yield runtime
    finally:
        runtime.cleanup()


def _uplink_client(node) -> str:
    """A client namespace wired to the node, as a machine on the node's network."""
    client = node.new_pod()
    node.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0",
             "netns", netns.path(client))
    node.run("ip", "addr", "add", f"{NODE_UPLINK}/30", "dev", "uplink0")
    node.run("ip", "link", "set", "uplink0", "up")
    netns.run(client, ["ip", "addr", "add", f"{CLIENT_ADDRESS}/30", "dev", "eth0"])
    netns.run(client, ["ip", "link", "set", "eth0", "up"])
    return client


def test_two_busybox_containers_reach_each_other_and_a_host_port(node, podman):
    podman.run("web", "nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-web",
               ports=("18080:8080",))
    podman.run("client", "sleep", "600")
    web_ip, client_ip = podman.ip("web"), podman.ip("client")

    assert web_ip.startswith("10.246.") and client_ip.startswith("10.246.")
    assert web_ip != client_ip
    assert sorted(a["address"] for a in node.allocations()) == sorted([web_ip, client_ip])

    def ask(*command: str) -> str:
        return podman("exec", "client", *command, check=False)

    assert "1 packets received" in ask("ping", "-c", "1", "-W", "2", web_ip)
    assert _eventually(lambda: ask("nc", "-w", "2", web_ip, "8080") == "hello-from-web")

    # portmap, chained after weft, publishes the container on the node's address.
    outside = _uplink_client(node)
    assert _eventually(lambda: probe.tcp_request(outside, NODE_UPLINK, 18080) ==
                       "hello-from-web")

    podman("rm", "-f", "-t", "0", "web", "client")
    assert node.allocations() == []
    assert node.links() == []


def _eventually(condition, attempts: int = 30) -> bool:
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(0.2)
    return False
