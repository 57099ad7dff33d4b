"""weft across nodes, in labs of namespaces: routes, VXLAN, NAT, restarts, removal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from weft.agent.routes import VXLAN_DEVICE
from weft.lab import build, matrix, netns, podman, probe, processes, status, topology
from weft.lab.state import lab_root

from ..waiting import eventually

pytestmark = pytest.mark.integration


def _quiet(_message: str) -> None:
    pass


@pytest.fixture
def make_lab():
    """Build labs with unique names; tear each down and check nothing is left."""
    made = []

    def make(**options):
        name = f"t{uuid.uuid4().hex[:7]}"
        made.append(name)
        opts = {"nodes": 3, "subnets": 2, "pods_per_node": 2, "runtime": "netns", **options}
        return build.up(name, opts["nodes"], opts["subnets"], opts["pods_per_node"],
                        opts["runtime"], _quiet, opts.get("vxlan_mode", "CrossSubnet"))

    yield make
    for name in made:
        build.down(name, _quiet)
        assert_nothing_left(name)


def assert_nothing_left(name: str) -> None:
    assert [n for n in netns.listed(name) if topology.owned_by(name, n)] == []
    assert not lab_root(name).exists()
    leftover = subprocess.run(["pgrep", "-f", f"/run/weft-lab/{name}/"], capture_output=True)
    assert leftover.stdout == b""


def pod_ip(state, pod: str) -> str:
    return state.pods[f"{state.name}-{pod}"]["ip"]


def pod_ns(state, pod: str) -> str:
    return f"{state.name}-{pod}"


class Capture:
    """tcpdump on a switch port (the underlay wire of one node), read with scapy."""

    def __init__(self, switch: str, port: str, path: Path) -> None:
        self.path = path
        self.proc = netns.popen(switch, ["tcpdump", "-i", port, "-n", "-U", "--immediate-mode",
                                          "-w", str(path)],
                                stderr=subprocess.PIPE)
        assert b"listening on" in self.proc.stderr.readline()

    def packets(self):
        import scapy.layers.l2
        import scapy.layers.vxlan  # noqa: F401 - decodes UDP 4789 as VXLAN
        from scapy.utils import rdpcap

        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        return rdpcap(str(self.path))


def test_default_lab_passes_its_whole_matrix(make_lab):
    state = make_lab()
    checks = matrix.run(state)
    failed = [c for c in checks if not c.passed]
    assert failed == []
    # every pod pair both ways (icmp + tcp), every node, the Service, the internet
    assert len(checks) == 6 * 5 * 2 + 6 * 3 + 6 * 2 + 6 + 3  # + cluster IP, NAT, node ports
    nat = [c for c in checks if c.kind == "nat"]
    assert len(nat) == 6 and all(c.passed for c in nat)


def test_same_subnet_is_plain_ip_and_other_subnet_is_vxlan(make_lab, tmp_path):
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN

    state = make_lab()
    src, direct, tunnelled = pod_ip(state, "node1-pod0"), pod_ip(state, "node2-pod0"), \
        pod_ip(state, "node3-pod0")
    capture = Capture(f"{state.name}-sw0", "n1", tmp_path / "node1.pcap")
    assert probe.ping(pod_ns(state, "node1-pod0"), direct, count=3)
    assert probe.ping(pod_ns(state, "node1-pod0"), tunnelled, count=3)
    packets = capture.packets()

    plain = [p for p in packets if IP in p and ICMP in p and UDP not in p]
    assert {(p[IP].src, p[IP].dst) for p in plain} == {(src, direct), (direct, src)}
    vxlan = [p for p in packets if UDP in p and p[UDP].dport == 4789]
    assert vxlan, "no VXLAN packets towards the node in the other subnet"
    assert {p[VXLAN].vni for p in vxlan} == {4096}
    inner = {(p[VXLAN][IP].src, p[VXLAN][IP].dst) for p in vxlan}
    assert inner == {(src, tunnelled), (tunnelled, src)}
    outer = {(p[IP].src, p[IP].dst) for p in vxlan}
    node1, node3 = state.plan.nodes[0].address, state.plan.nodes[2].address
    assert outer == {(node1, node3), (node3, node1)}
    assert not [p for p in vxlan if p[VXLAN][IP].dst == direct]


@pytest.mark.parametrize(("mode", "tunnelled"), [("Always", True), ("Never", False)])
def test_vxlan_mode_always_tunnels_everything_and_never_nothing(make_lab, tmp_path, mode,
                                                                tunnelled):
    from scapy.layers.inet import UDP

    state = make_lab(nodes=2, subnets=1, pods_per_node=1, vxlan_mode=mode)
    capture = Capture(f"{state.name}-sw0", "n1", tmp_path / "wire.pcap")
    assert probe.ping(pod_ns(state, "node1-pod0"), pod_ip(state, "node2-pod0"), count=3)
    packets = capture.packets()
    vxlan = [p for p in packets if UDP in p and p[UDP].dport == 4789]
    assert bool(vxlan) == tunnelled


def test_pod_mtu_is_1450_and_the_largest_df_ping_crosses_the_tunnel(make_lab):
    state = make_lab(pods_per_node=1)
    src, dst = pod_ns(state, "node1-pod0"), pod_ip(state, "node3-pod0")
    assert netns.link(src, "eth0")["mtu"] == 1450
    largest = 1450 - 20 - 8  # IPv4 and ICMP headers
    assert probe.ping(src, dst, size=largest, dont_fragment=True)
    assert not probe.ping(src, dst, size=largest + 1, dont_fragment=True, wait=1)


def _weft_state(node: str) -> dict:
    """Routes of protocol 88, the tunnel's neighbours and FDB, and the tunnel device."""
    from weft.agent.dataplane import LinuxDataplane

    with netns.iproute(node) as ipr:
        have = LinuxDataplane(ipr).current()
        tunnel = ipr.link("get", ifname=VXLAN_DEVICE)[0]
        device = (tunnel["index"], tunnel.get("address"),
                  sorted(a.get("address") for a in ipr.get_addr(index=tunnel["index"])))
    return {"routes": have.routes, "neighbours": have.neighbours, "fdb": have.fdb,
            "device": device}


def test_removing_a_node_releases_its_blocks_everywhere(make_lab):
    state = make_lab(pods_per_node=1)
    node3 = f"{state.name}-node3"
    before = _weft_state(f"{state.name}-node1")
    block3 = next(cidr for cidr, r in _weft_state(node3)["routes"].items()
                  if r.kind == "blackhole")
    assert block3 in before["routes"] and before["fdb"]

    build.remove_node(state, node3, _quiet)

    def gone() -> bool:
        return all(block3 not in _weft_state(n)["routes"] and not _weft_state(n)["fdb"]
                   and not _weft_state(n)["neighbours"]
                   for n in (f"{state.name}-node1", f"{state.name}-node2"))
    assert eventually(gone, seconds=1.5)
    from weft.ipam.local import LocalStore

    blocks = LocalStore(state.datastore).list("IPAMBlock")
    assert node3 not in {b["spec"]["node"] for b in blocks}
    assert all(c.passed for c in matrix.run(state))
    # What status and a second removal say of it.
    text = status.show(state)
    assert text.startswith(f"lab {state.name}: 2 nodes on 1 of 2 subnets")
    assert node3 not in text.split("ROUTES")[0]
    with pytest.raises(build.LabError, match=f"{node3} was already removed"):
        build.remove_node(state, node3, _quiet)


def lab_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weft", "lab", *args], capture_output=True,
                          text=True, timeout=120)


def test_up_refuses_what_cannot_work_before_building_anything():
    name = f"t{uuid.uuid4().hex[:7]}"
    never = lab_command("up", "--name", name, "--vxlan-mode", "Never")
    assert never.returncode == 1 and never.stdout == ""
    assert never.stderr.startswith("weft: --vxlan-mode Never cannot route pods across 2 "
                                   "subnets")
    assert "--subnets 1" in never.stderr and "{" not in never.stderr
    assert_nothing_left(name)


def test_up_on_an_existing_lab_refuses_without_a_banner(make_lab):
    state = make_lab(nodes=1, subnets=1, pods_per_node=0)
    again = lab_command("up", "--name", state.name)
    assert again.returncode == 1 and again.stdout == ""
    assert f"run 'weft lab down --name {state.name}' first" in again.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_agent_restart_under_traffic_loses_nothing_and_changes_nothing(make_lab, sig):
    """Killed or stopped cleanly, the agent leaves everything up, and a new one adopts it."""
    state = make_lab(pods_per_node=1)
    nodes = [f"{state.name}-node1", f"{state.name}-node3"]
    before = {n: _weft_state(n) for n in nodes}
    ping = netns.popen(pod_ns(state, "node1-pod0"),
                       ["ping", "-q", "-c", "60", "-i", "0.05", pod_ip(state, "node3-pod0")],
                       stdout=subprocess.PIPE)
    time.sleep(0.5)
    for node in nodes:
        build.restart_agent(state, node, sig)
    out, _ = ping.communicate(timeout=30)
    assert b" 0% packet loss" in out, out.decode()
    assert {n: _weft_state(n) for n in nodes} == before


def test_entries_deleted_by_hand_come_back_within_a_second(make_lab):
    state = make_lab(pods_per_node=1)
    node1 = f"{state.name}-node1"
    before = _weft_state(node1)
    remote = next(cidr for cidr, r in before["routes"].items() if r.kind == "vxlan")
    neighbour = next(iter(before["neighbours"].values()))
    fdb = next(iter(before["fdb"].values()))
    netns.run(node1, ["ip", "route", "del", remote])
    netns.run(node1, ["ip", "neigh", "del", neighbour.address, "dev", VXLAN_DEVICE])
    netns.run(node1, ["bridge", "fdb", "del", fdb.mac, "dev", VXLAN_DEVICE, "dst",
                      fdb.destination])
    assert eventually(lambda: _weft_state(node1) == before, seconds=1.5)
    assert probe.ping(pod_ns(state, "node1-pod0"), pod_ip(state, "node3-pod0"))


def test_a_deleted_tunnel_comes_back_and_peers_learn_its_new_mac(make_lab):
    state = make_lab(pods_per_node=1)
    node1, node3 = f"{state.name}-node1", f"{state.name}-node3"
    old_mac = _weft_state(node1)["device"][1]
    netns.run(node1, ["ip", "link", "del", VXLAN_DEVICE])

    def peer_knows_new_mac() -> bool:
        mac = _weft_state(node1)["device"][1]
        return mac != old_mac and mac in _weft_state(node3)["fdb"]

    assert eventually(peer_knows_new_mac, seconds=3)
    assert eventually(lambda: probe.ping(pod_ns(state, "node1-pod0"),
                                         pod_ip(state, "node3-pod0")), seconds=3)


def test_metrics_and_health_endpoints(make_lab):
    state = make_lab(nodes=1, subnets=1, pods_per_node=1)
    node = f"{state.name}-node1"
    fetch = ("import sys, urllib.request as u; "
             "print(u.urlopen('http://127.0.0.1:9645' + sys.argv[1]).read().decode())")

    def get(path: str) -> str:
        return netns.run(node, ["python3", "-c", fetch, path]).stdout.decode()

    assert get("/healthz").strip() == "ok"
    assert get("/readyz").strip() == "ready"
    proxy = netns.run(node, ["python3", "-c", fetch.replace("9645", "9646"), "/metrics"]
                      ).stdout.decode()
    assert "weft_proxy_sync_duration_seconds_count" in proxy
    assert re.search(r"^weft_proxy_rules\{table=\"all\"\} [1-9]", proxy, re.M)
    metrics = get("/metrics")
    assert 'weft_cni_requests_total{command="ADD",plugin="weft",result="ok"} 1.0' in metrics
    assert "weft_blocks 1.0" in metrics
    assert "weft_reconcile_duration_seconds_count" in metrics


def test_agent_cleanup_removes_what_weft_made(make_lab):
    state = make_lab(nodes=2, subnets=2, pods_per_node=0)
    node = f"{state.name}-node1"
    processes.stop({state.processes[f"agent-{node}"], state.processes[f"proxy-{node}"]})
    conf_dir = state.node_dir(node) / "net.d"
    netns.run(node, ["python3", "-m", "weft", "agent", "cleanup", "--cni-conf-dir",
                     str(conf_dir)])
    with netns.iproute(node) as ipr:
        assert ipr.get_routes(proto=88) == ()
        assert not [k for k in ipr.get_links() if k.get("ifname") == VXLAN_DEVICE]
    saved = netns.run(node, ["iptables-save"]).stdout.decode()
    assert "WEFT-" not in saved
    assert not (conf_dir / "10-weft.conflist").exists()


@pytest.mark.podman
@pytest.mark.skipif(not podman.available(), reason="needs podman, runc and busybox-static")
def test_a_lab_of_busybox_containers_through_podman_passes_its_matrix(make_lab):
    state = make_lab(nodes=2, subnets=2, pods_per_node=1, runtime="podman")
    checks = matrix.run(state)
    assert [c for c in checks if not c.passed] == []
    assert len(checks) == 2 * 1 * 2 + 2 * 2 + 2 * 3 + 2  # pods, nodes, service+nat, nodeports


def test_down_after_a_failed_up_leaves_nothing(monkeypatch):
    name = f"f{uuid.uuid4().hex[:7]}"

    def broken(*_args):
        raise RuntimeError("pods could not be made")

    monkeypatch.setattr(build, "_make_pods", broken)
    with pytest.raises(RuntimeError):
        build.up(name, 2, 1, 1, "netns", _quiet)
    assert_nothing_left(name)
    build.down(name, _quiet)
    assert_nothing_left(name)
