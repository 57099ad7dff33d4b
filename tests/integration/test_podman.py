"""A real container runtime: podman's CNI backend runs busybox containers on weft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weft.agent.install import conflist
from weft.lab import netns, probe
from weft.lab import podman as podman_driver

from ..waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.podman]

if not podman_driver.available():
    pytestmark.append(pytest.mark.skip(reason="needs podman, runc and busybox-static"))

CLIENT_ADDRESS, NODE_UPLINK = "198.18.0.2", "198.18.0.1"


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return podman_driver.busybox_rootfs(tmp_path_factory.mktemp("busybox-rootfs"))


@pytest.fixture
def podman(node, busybox_rootfs):
    netd = node.root / "net.d"
    netd.mkdir()
    config = conflist(1450, datastore="local", datastorePath=str(node.datastore_path),
                      stateDir=str(node.state_dir), nodeName=node.name,
                      socket=str(node.socket),
                      ipam={"pools": [{"cidr": "10.246.0.0/16", "blockSize": 26}]})
    config["name"] = "weft-test"
    (netd / "weft-test.conflist").write_text(json.dumps(config))
    runtime = podman_driver.Podman(node.name, node.root / "podman", netd,
                                   [str(node.cni_bin), "/usr/lib/cni"], busybox_rootfs,
                                   "weft-test")
    try:
        yield runtime
    finally:
        runtime.remove_all()


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
    assert eventually(lambda: ask("nc", "-w", "2", web_ip, "8080") == "hello-from-web")

    # portmap, chained after weft, publishes the container on the node's address.
    outside = _uplink_client(node)
    assert eventually(lambda: probe.tcp_request(outside, NODE_UPLINK, 18080) ==
                       "hello-from-web")

    podman("rm", "-f", "-t", "0", "web", "client")
    assert node.allocations() == []
    assert node.links() == []
