"""`weft lab test`: the connectivity matrix, checked with real traffic.

Each pod tries every other pod (ICMP, and TCP whose answer must show the pod's
own address: no NAT between pods), every node's underlay address (ICMP), the
echo Service's cluster IP (TCP and UDP), and the internet's echo service (TCP),
which must see the pod's node address as the source: NAT outgoing. The internet
tries the echo Service's NodePort on every node.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from weft.lab import netns, probe, services, topology
from weft.lab.build import INTERNET_PORT, node_podman
from weft.lab.state import LabState
from weft.table import render

SVC_TCP, SVC_UDP, INTERNET = "svc-tcp", "svc-udp", "internet"


@dataclass(frozen=True)
class Check:
    source: str
    target: str
    kind: str
    passed: bool
    detail: str = ""


def run(state: LabState, workers: int = 8) -> list[Check]:
    jobs: list[Callable[[], Check]] = []
    pods = {name: info["ip"] for name, info in state.pods.items()}
    for source, info in state.pods.items():
        for target, ip in pods.items():
            if target != source:
                jobs.append(lambda s=source, t=target, ip=ip: _ping(state, s, t, ip))
                jobs.append(lambda s=source, t=target, ip=ip: _tcp_pod(state, s, t, ip))
        for node in state.nodes_present:
            jobs.append(lambda s=source, n=node: _ping(state, s, n.name, n.address))
        jobs.append(lambda s=source: _service(state, s, "tcp"))
        jobs.append(lambda s=source: _service(state, s, "udp"))
        node_ip = state.plan.node(info["node"]).address
        jobs.append(lambda s=source, ip=node_ip: _internet(state, s, ip))
    for node in state.nodes_present:
        jobs.append(lambda n=node: _node_port(state, n.name, n.address))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


def report(state: LabState, checks: list[Check], legend: str = "") -> str:
    """The matrix (one row per source), what its targets are, failures spelled out,
    and a summary line."""
    nodes = [n.name for n in state.nodes_present]
    targets = [*state.pods, *nodes, SVC_TCP, SVC_UDP, INTERNET]
    short = {name: name.removeprefix(f"{state.name}-") for name in [*state.pods, *nodes]}
    by_pair: dict[tuple[str, str], list[Check]] = {}
    for check in checks:
        by_pair.setdefault((check.source, check.target), []).append(check)
    rows = []
    for source in [*state.pods, INTERNET]:
        row = [short.get(source, source)]
        for target in targets:
            pair = by_pair.get((source, target))
            row.append("-" if not pair else "ok" if all(c.passed for c in pair) else
                       "FAIL " + ",".join(c.kind for c in pair if not c.passed))
        rows.append(row)
    text = render(["from \\ to", *(short.get(t, t) for t in targets)], rows, upper=False)
    text += "\n" + (legend or (
        f"{SVC_TCP}/{SVC_UDP}: the echo Service's cluster IP {services.CLUSTER_IP} "
        f"(TCP {services.TCP_PORT}, UDP {services.UDP_PORT}); internet -> node: "
        f"NodePort {services.NODE_PORT}")) + "\n"
    failures = [c for c in checks if not c.passed]
    if failures:
        text += "\nfailures:\n" + "".join(
            f"  {short.get(c.source, c.source)} -> {short.get(c.target, c.target)} "
            f"{c.kind}: {c.detail}\n" for c in failures)
    passed = len(checks) - len(failures)
    return text + f"\n{passed} passed, {len(failures)} failed\n"


def exec_prefix(state: LabState, pod: str) -> list[str]:
    """How to run a command in a pod: in its container, or in its namespace."""
    if state.runtime == "podman":
        return node_podman(state, state.pods[pod]["node"]).exec_prefix(pod)
    return ["nsenter", f"--net={state.pods[pod]['netns']}"]


def ask(netns_path: str, protocol: str, host: str, port: int, source_port: int = 0,
        timeout: float = 2, count: int = 1) -> str:
    """The echo service's answer(s, a line each), asked from inside a network namespace."""
    proc = subprocess.run(["nsenter", f"--net={netns_path}", sys.executable, "-m",
                           "weft.lab.echo", "ask", protocol, host, str(port), "--timeout",
                           str(timeout), "--source-port", str(source_port), "--count",
                           str(count)], capture_output=True, timeout=15 + count * timeout)
    return proc.stdout.decode(errors="replace").strip()


def _ping(state: LabState, source: str, target: str, address: str) -> Check:
    prefix = exec_prefix(state, source)
    ok = probe.ping(source, address, count=1, wait=2, prefix=prefix) or \
        probe.ping(source, address, count=2, wait=2, prefix=prefix)
    return Check(source, target, "icmp", ok, "" if ok else f"no echo reply from {address}")


def _tcp_pod(state: LabState, source: str, target: str, address: str) -> Check:
    expected = f"{target.removeprefix(f'{state.name}-')} {state.pods[source]['ip']}"
    answer = probe.tcp_request(source, address, services.POD_TCP_PORT,
                               prefix=exec_prefix(state, source))
    ok = answer == expected
    return Check(source, target, "tcp", ok, "" if ok else
                 f"{address}:{services.POD_TCP_PORT} answered {answer!r}, not {expected!r}")


def _service(state: LabState, source: str, protocol: str) -> Check:
    port = services.TCP_PORT if protocol == "tcp" else services.UDP_PORT
    answer = ask(state.pods[source]["netns"], protocol, services.CLUSTER_IP, port)
    names = {p.removeprefix(f"{state.name}-") for p in state.pods}
    ok = answer.split(" ")[0] in names
    return Check(source, SVC_TCP if protocol == "tcp" else SVC_UDP, protocol, ok, "" if ok
                 else f"{services.CLUSTER_IP}:{port}/{protocol} answered {answer!r}")


def _internet(state: LabState, source: str, node_ip: str) -> Check:
    answer = probe.tcp_request(source, topology.INTERNET_ADDRESS, INTERNET_PORT,
                               prefix=exec_prefix(state, source))
    seen = answer.split(" ")[-1] if answer.startswith("internet ") else ""
    ok = seen == node_ip
    if not answer:
        detail = f"no answer from {topology.INTERNET_ADDRESS}:{INTERNET_PORT}"
    else:
        detail = f"arrived from {seen or answer!r}, not from its node {node_ip}"
    return Check(source, INTERNET, "nat", ok, "" if ok else detail)


def _node_port(state: LabState, node: str, address: str) -> Check:
    answer = ask(netns.path(state.plan.internet), "tcp", address, services.NODE_PORT)
    names = {p.removeprefix(f"{state.name}-") for p in state.pods}
    ok = answer.split(" ")[0] in names
    return Check(INTERNET, node, "nodeport", ok, "" if ok else
                 f"{address}:{services.NODE_PORT} answered {answer!r}")
