"""weft-ipam under the containernetworking ptp plugin, and plugins chained after weft."""

from __future__ import annotations

import pytest

from weft.lab import netns, probe

from ..conftest import NODE_ADDRESS

pytestmark = pytest.mark.integration


def test_ptp_with_weft_ipam_gives_pods_that_reach_each_other(node):
    conf = {"type": "ptp", "mtu": 1450,
            "ipam": {"type": "weft-ipam", "datastorePath": str(node.datastore_path),
                     "stateDir": str(node.state_dir), "nodeName": node.name,
                     "socket": str(node.socket),
                     "pools": [{"cidr": "10.245.0.0/16", "blockSize": 26}]}}
    runtime = node.runtime([conf])
    pod_a, pod_b = node.new_pod(), node.new_pod()
    ip_a = runtime.add("ctr-pa", netns.path(pod_a))["ips"][0]["address"].split("/")[0]
    ip_b = runtime.add("ctr-pb", netns.path(pod_b))["ips"][0]["address"].split("/")[0]

    assert ip_a.startswith("10.245.") and ip_b.startswith("10.245.") and ip_a != ip_b
    assert probe.ping(pod_a, ip_b)
    assert probe.ping(pod_b, NODE_ADDRESS)
    assert sorted(a["handle"] for a in node.allocations()) == ["ctr-pa/eth0", "ctr-pb/eth0"]

    runtime.delete("ctr-pa", netns.path(pod_a))
    runtime.delete("ctr-pb", netns.path(pod_b))
    assert node.allocations() == []


def test_tuning_and_bandwidth_work_after_weft(node):
    plugins = [node.netconf(),
               {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "1"}},
               {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 100_000,
                "egressRate": 8_000_000, "egressBurst": 100_000}]
    runtime = node.runtime(plugins)
    pod = node.new_pod()
    result = runtime.add("ctr-chain", netns.path(pod))
    assert [i["name"] for i in result["interfaces"]][:2] == [result["interfaces"][0]["name"],
                                                            "eth0"]
    assert netns.run(pod, ["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"]).stdout.strip() \
        == b"1"
    assert probe.ping(pod, NODE_ADDRESS)
    runtime.check("ctr-chain", netns.path(pod))
    runtime.delete("ctr-chain", netns.path(pod))
    assert node.links() == []
