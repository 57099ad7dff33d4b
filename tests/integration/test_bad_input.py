"""Bad input to the real binary: the right code, a message that says what to fix,
and nothing changed on the node."""

from __future__ import annotations

import json
import os

import pytest

from weft.cni.names import host_ifname
from weft.lab import netns

pytestmark = pytest.mark.integration


def snapshot(node, pod: str) -> dict:
    """What a half-done ADD could leave: links, routes, addresses, state files."""
    def in_ns(name: str) -> tuple:
        with netns.iproute(name) as ipr:
            links = sorted(link.get("ifname") for link in ipr.get_links())
            routes = sorted(str((r.get("dst"), r.get("oif"))) for r in ipr.get_routes(table=254))
            addrs = sorted(a.get("address") for a in ipr.get_addr())
        return links, routes, addrs

    objects = sorted(str(p.relative_to(node.root)) + ":" + p.read_text()
                     for p in node.datastore_path.rglob("*.yaml"))
    allocations = sorted(a["address"] for a in node.allocations())
    return {"node": in_ns(node.name), "pod": in_ns(pod), "objects": objects,
            "allocations": allocations}


def env_for(node, pod: str, **changes: str | None) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr-bad",
           "CNI_NETNS": netns.path(pod), "CNI_IFNAME": "eth0", "CNI_PATH": str(node.cni_bin)}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


CASES = {
    "stdin is not JSON": (b"{not json", {}, 6, "failed to decode"),
    "no name": ({"name": None}, {}, 7, "'name' is missing"),
    "no type": ({"type": None}, {}, 7, "'type' is missing"),
    "unknown cniVersion": ({"cniVersion": "9.9.9"}, {}, 1, "unsupported cniVersion '9.9.9'"),
    "no CNI_COMMAND": ({}, {"CNI_COMMAND": None}, 4, "CNI_COMMAND is not set"),
    "no CNI_NETNS": ({}, {"CNI_NETNS": None}, 4, "CNI_NETNS is not set"),
    "no CNI_CONTAINERID": ({}, {"CNI_CONTAINERID": None}, 4, "CNI_CONTAINERID is not set"),
    "netns does not exist": ({}, {"CNI_NETNS": "/run/netns/wt-no-such-netns"}, 3,
                             "network namespace /run/netns/wt-no-such-netns does not exist"),
    "ifname too long": ({}, {"CNI_IFNAME": "a-very-long-ifname"}, 4,
                        "is 18 bytes; the kernel allows at most 15"),
    "pool CIDR does not parse": ({"pools": [{"cidr": "10.244.0.0/33"}]}, {}, 7,
                                 "not a valid CIDR"),
    "block larger than pool": ({"pools": [{"cidr": "10.244.0.0/24", "blockSize": 20}]}, {}, 7,
                               "blockSize /20 is larger than the pool 10.244.0.0/24"),
    "mtu out of range": ({"mtu": 40}, {}, 7, "'mtu' is 40"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_cleanly(node, case):
    change, env_changes, code, words = CASES[case]
    pod = node.new_pod()
    if isinstance(change, bytes):
        stdin = change
    else:
        conf = node.netconf()
        for key, value in change.items():
            if key == "pools":
                conf["ipam"]["pools"] = value
            elif value is None:
                del conf[key]
            else:
                conf[key] = value
        stdin = json.dumps(conf).encode()
    before = snapshot(node, pod)

    proc = netns.run(node.name, [str(node.cni_bin / "weft")], check=False, input=stdin,
                     env=env_for(node, pod, **env_changes))

    assert proc.returncode != 0
    assert b"Traceback" not in proc.stdout + proc.stderr
    error = json.loads(proc.stdout)
    assert error["code"] == code, error
    assert words in error["msg"] + error.get("details", ""), error
    assert snapshot(node, pod) == before


def test_exhausted_pool_names_the_pool_and_leaves_nothing(node):
    conf = node.netconf(ipam={"type": "weft-ipam",
                              "pools": [{"cidr": "10.244.7.0/30", "blockSize": 30}]})
    runtime = node.runtime([conf])
    # A /30 block holds 4 addresses; its first is kept back as the block's gateway.
    pods = [node.new_pod() for _ in range(4)]
    for i in range(3):
        runtime.add(f"ctr-{i}", netns.path(pods[i]))
    before = snapshot(node, pods[3])

    code, error = node.invoke("ADD", conf, "ctr-3", pods[3])

    assert code != 0
    assert error["code"] == 101
    assert "10.244.7.0/30" in error["msg"] and "exhausted" in error["msg"]
    assert snapshot(node, pods[3]) == before


def test_add_failing_halfway_leaves_nothing_behind(node):
    # A node holds a block from its first pod (or its agent's start) on; claiming
    # one is not what this test is about.
    runtime = node.runtime()
    running = node.new_pod()
    runtime.add("ctr-running", netns.path(running))
    pod = node.new_pod()
    netns.run(pod, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    before = snapshot(node, pod)

    code, error = node.invoke("ADD", node.netconf(), "ctr-half", pod)

    assert code != 0
    assert error["code"] == 102
    assert "already exists" in error["details"]
    assert snapshot(node, pod) == before
    assert [a["handle"] for a in node.allocations()] == ["ctr-running/eth0"]
    assert node.links() == [host_ifname("ctr-running", "eth0")]


def test_del_succeeds_with_the_kubeconfig_gone(node):
    """Releasing is local: a DEL must not need the API server's credentials, or kubelet
    retries it forever and the pod never leaves Terminating."""
    pod = node.new_pod()
    runtime = node.runtime()
    runtime.add("ctr-gone", netns.path(pod))
    assert [a["handle"] for a in node.allocations()] == ["ctr-gone/eth0"]
    conf = {**node.netconf(), "datastore": "kubernetes",
            "kubeconfig": str(node.root / "no-such-kubeconfig")}

    code, answer = node.invoke("DEL", conf, "ctr-gone", pod)

    assert (code, answer) == (0, None)
    assert node.allocations() == [] and node.links() == []
