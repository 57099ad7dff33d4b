"""A pod's network on one node, made by the real weft binary as libcni runs it."""

from __future__ import annotations

import sys
import time

import netaddr
import pytest

from weft.agent.install import install_binaries, shim_kind
from weft.cni.names import host_ifname
from weft.ipam.local import LocalStore
from weft.lab import netns, probe
from weft.lab.libcni import PluginError

from ..conftest import NODE_ADDRESS
from ..waiting import eventually

pytestmark = pytest.mark.integration


def _address(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def test_two_pods_reach_each_other_and_the_node(node):
    runtime = node.runtime()
    pod_a, pod_b = node.new_pod(), node.new_pod()
    result_a = runtime.add("ctr-a", netns.path(pod_a), args={"K8S_POD_NAMESPACE": "default",
                                                             "K8S_POD_NAME": "a"})
    result_b = runtime.add("ctr-b", netns.path(pod_b))
    ip_a, ip_b = _address(result_a), _address(result_b)

    assert ip_a != ip_b
    assert netaddr.IPAddress(ip_a) in netaddr.IPNetwork("10.244.0.0/16")
    assert result_a["ips"][0]["address"].endswith("/32")
    assert result_a["interfaces"][1] == {**result_a["interfaces"][1], "name": "eth0",
                                         "sandbox": netns.path(pod_a)}
    assert result_a["interfaces"][0]["name"] == host_ifname("ctr-a", "eth0")

    assert probe.ping(pod_a, ip_b)
    assert probe.ping(pod_b, ip_a)
    assert probe.ping(pod_a, NODE_ADDRESS)
    server = netns.popen(pod_b, [sys.executable, "-m", "weft.lab.echo", "serve", "--name",
                                 "hello-from-b", "--tcp", "8080"])
    try:
        # The answer names the caller's address as the server saw it: no NAT in between.
        assert eventually(lambda: probe.tcp_request(pod_a, ip_b, 8080) ==
                          f"hello-from-b {ip_a}")
    finally:
        server.kill()
        server.wait()

    assert netns.link(pod_a, "eth0")["mtu"] == 1450
    assert netns.link(node.name, host_ifname("ctr-a", "eth0"))["mtu"] == 1450
    with netns.iproute(pod_a) as ipr:
        routes = [(r.get("dst"), r.get("gateway")) for r in ipr.get_routes(family=2, table=254)]
    assert routes == [(None, "169.254.1.1")]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-shim", "python-shim"])
def test_each_shim_hands_pods_to_the_agent(node, tmp_path, compiled):
    node.cni_bin = tmp_path / "bin"
    install_binaries(node.cni_bin, compiled=compiled)
    assert shim_kind(node.cni_bin / "weft") == ("compiled shim" if compiled else "Python shim")
    node.start_agent()
    runtime = node.runtime()
    pod_a, pod_b = node.new_pod(), node.new_pod()
    ip_a = _address(runtime.add("ctr-a", netns.path(pod_a)))
    ip_b = _address(runtime.add("ctr-b", netns.path(pod_b)))
    assert probe.ping(pod_a, ip_b) and probe.ping(pod_b, ip_a)
    runtime.delete("ctr-a", netns.path(pod_a))
    runtime.delete("ctr-b", netns.path(pod_b))
    assert (node.root / "agent.log").read_text().count("ADD ctr-") == 2  # none in-process
    assert node.links() == [] and node.allocations() == []


def test_check_passes_then_names_the_deleted_route(node):
    runtime = node.runtime()
    pod = node.new_pod()
    result = runtime.add("ctr-check", netns.path(pod))
    runtime.check("ctr-check", netns.path(pod))

    node.run("ip", "route", "del", result["ips"][0]["address"])
    with pytest.raises(PluginError) as failure:
        runtime.check("ctr-check", netns.path(pod))
    assert failure.value.code == 104
    assert f"host route {result['ips'][0]['address']}" in failure.value.msg
    assert "missing" in failure.value.msg


def test_del_twice_and_after_the_netns_is_gone(node):
    runtime = node.runtime()
    pod = node.new_pod()
    runtime.add("ctr-del", netns.path(pod))
    runtime.delete("ctr-del", netns.path(pod))
    runtime.delete("ctr-del", netns.path(pod))
    assert node.links() == []
    assert node.allocations() == []

    runtime.add("ctr-gone", netns.path(pod))
    netns.remove(pod)
    runtime.delete("ctr-gone", netns.path(pod))
    runtime.delete("ctr-gone", "")
    assert node.links() == []
    assert node.allocations() == []


def test_block_usage_reaches_the_datastore_without_a_reconcile_per_pod(node):
    node.start_agent("--resync-seconds", "2")
    runtime = node.runtime()
    assert eventually(lambda: node.metric("weft_reconcile_duration_seconds_count") >= 1)

    def reconciles() -> tuple[float, float]:
        return (node.metric("weft_reconciles_total", trigger="resync"),
                node.metric("weft_reconciles_total", trigger="change"))
    resyncs_before, changes_before = reconciles()
    pods = [node.new_pod() for _ in range(40)]
    for i, pod in enumerate(pods):  # over some seconds: a few resyncs, however many
        runtime.add(f"ctr-{i}", netns.path(pod))
        time.sleep(0.1)
    resyncs, changes = reconciles()
    # Pods start no reconcile. A resync publishes the usage, and that write is one
    # change, which publishes nothing: at most one change-started pass per resync (and
    # one for a resync just before the pods).
    assert changes - changes_before <= resyncs - resyncs_before + 1

    def published() -> list[int]:
        return [(b.get("status") or {}).get("allocated")
                for b in LocalStore(node.datastore_path).list("IPAMBlock")]

    # One block: the 40 pods and the agent's tunnel address.
    assert eventually(lambda: published() == [41], seconds=5), published()
    for i, pod in enumerate(pods):
        runtime.delete(f"ctr-{i}", netns.path(pod))
    assert eventually(lambda: published() == [1], seconds=5), published()


def test_gc_frees_what_the_runtime_no_longer_lists(node):
    runtime = node.runtime(cni_version="1.1.0")
    keep, lose = node.new_pod(), node.new_pod()
    kept = runtime.add("ctr-keep", netns.path(keep))
    runtime.add("ctr-lose", netns.path(lose))

    runtime.gc([("ctr-keep", "eth0")])

    assert [a["handle"] for a in node.allocations()] == ["ctr-keep/eth0"]
    assert node.links() == [host_ifname("ctr-keep", "eth0")]
    assert probe.ping(keep, NODE_ADDRESS)
    runtime.check("ctr-keep", netns.path(keep))
    assert _address(kept) == node.allocations()[0]["address"]
    log = (node.state_dir / "cni.log").read_text()
    assert "gc released" in log and "ctr-lose/eth0" in log


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_each_cni_version_gets_its_own_result_format(node, version):
    pod = node.new_pod()
    code, result = node.invoke("ADD", node.netconf(version), "ctr-v", pod)
    assert code == 0, result
    assert result["cniVersion"] == version
    ip = result["ips"][0]
    assert ("version" in ip) == (version in ("0.3.1", "0.4.0"))
    assert ("mtu" in result["interfaces"][0]) == (version == "1.1.0")
    code, _ = node.invoke("DEL", node.netconf(version), "ctr-v", pod)
    assert code == 0


def test_status_and_version(node):
    code, answer = node.invoke("VERSION", {"cniVersion": "0.4.0"})
    assert code == 0
    assert answer == {"cniVersion": "0.4.0",
                      "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    code, answer = node.invoke("STATUS", node.netconf("1.1.0"))
    assert (code, answer) == (0, None)
    no_pool = node.netconf("1.1.0", ipam={"type": "weft-ipam"})
    code, answer = node.invoke("STATUS", no_pool)
    assert code == 1 and answer["code"] == 50
    assert "IPPool" in answer["details"]


def test_ipv6_pool_gets_a_128_and_reaches_the_other_pod(node):
    conf = node.netconf(ipam={"type": "weft-ipam", "pools": [{"cidr": "fd00:10:244::/48"}]})
    runtime = node.runtime([conf])
    pod_a, pod_b = node.new_pod(), node.new_pod()
    ip_a = runtime.add("ctr-6a", netns.path(pod_a))["ips"][0]["address"]
    ip_b = runtime.add("ctr-6b", netns.path(pod_b))["ips"][0]["address"]
    assert ip_a.endswith("/128") and ip_b.endswith("/128")
    assert netaddr.IPNetwork(ip_b).ip in netaddr.IPNetwork("fd00:10:244::/48")
    assert probe.ping(pod_a, ip_b.split("/")[0])
    runtime.delete("ctr-6a", netns.path(pod_a))
    runtime.delete("ctr-6b", netns.path(pod_b))
    assert node.links() == []
