"""`weft lab test`: the connectivity matrix, checked with real traffic.

Each pod tries every other pod (ICMP and TCP), every node's underlay address
(ICMP), and the internet's echo service (TCP), which must see the pod's node
address as the source: NAT outgoing at work.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from weft.lab import probe, topology
from weft.lab.build import INTERNET_PORT, POD_PORT, node_podman
from weft.lab.state import LabState
from weft.table import render


@dataclass(frozen=True)
class Check:
    source: str
    target: str
    kind: str
    passed: bool
    detail: str = ""


def run(state: LabState, workers: int = 8) -> list[Check]:
    plan = state.plan
    jobs: list[Callable[[], Check]] = []
    for source, info in state.pods.items():
        prefix = exec_prefix(state, source)
        for target, target_info in state.pods.items():
            if target != source:
                jobs.append(lambda s=source, t=target, ip=target_info["ip"], p=prefix:
                            _ping(s, t, ip, p))
                jobs.append(lambda s=source, t=target, ip=target_info["ip"], p=prefix:
                            _tcp_pod(state, s, t, ip, p))
        for node in state.nodes_present:
            jobs.append(lambda s=source, n=node, p=prefix: _ping(s, n.name, n.address, p))
        node_ip = plan.node(info["node"]).address
        jobs.append(lambda s=source, ip=node_ip, p=prefix: _internet(s, ip, p))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


def report(state: LabState, checks: list[Check]) -> str:
    """The matrix (one row per source pod), failures spelled out, and a summary line."""
    short = {name: name.removeprefix(f"{state.name}-") for name in
             [*state.pods, *(n.name for n in state.nodes_present)]}
    short["internet"] = "internet"
    targets = [*state.pods, *(n.name for n in state.nodes_present), "internet"]
    by_pair: dict[tuple[str, str], list[Check]] = {}
    for check in checks:
        by_pair.setdefault((check.source, check.target), []).append(check)
    rows = []
    for source in state.pods:
        row = [short[source]]
        for target in targets:
            pair = by_pair.get((source, target))
            row.append("-" if not pair else "ok" if all(c.passed for c in pair) else
                       "FAIL " + ",".join(c.kind for c in pair if not c.passed))
        rows.append(row)
    text = render(["from \\ to", *(short[t] for t in targets)], rows, upper=False)
    failures = [c for c in checks if not c.passed]
    if failures:
        text += "\nfailures:\n" + "".join(
            f"  {short.get(c.source, c.source)} -> {short.get(c.target, c.target)} "
            f"{c.kind}: {c.detail}\n" for c in failures)
    passed = len(checks) - len(failures)
    return text + f"\n{passed} passed, {len(failures)} failed\n"


def exec_prefix(state: LabState, pod: str) -> list[str]:
    if state.runtime == "podman":
        return node_podman(state, state.pods[pod]["node"]).exec_prefix(pod)
    return ["nsenter", f"--net=/run/netns/{pod}"]


def _ping(source: str, target: str, address: str, prefix: list[str]) -> Check:
    ok = probe.ping(source, address, count=1, wait=2, prefix=prefix) or \
        probe.ping(source, address, count=2, wait=2, prefix=prefix)
    return Check(source, target, "icmp", ok, "" if ok else f"no echo reply from {address}")


def _tcp_pod(state: LabState, source: str, target: str, address: str,
             prefix: list[str]) -> Check:
    expected = target.removeprefix(f"{state.name}-")
    answer = probe.tcp_request(source, address, POD_PORT, prefix=prefix)
    ok = answer == expected
    return Check(source, target, "tcp", ok,
                 "" if ok else f"{address}:{POD_PORT} answered {answer!r}, not {expected!r}")


def _internet(source: str, node_ip: str, prefix: list[str]) -> Check:
    answer = probe.tcp_request(source, topology.INTERNET_ADDRESS, INTERNET_PORT, prefix=prefix)
    seen = answer.split(" ")[-1] if answer.startswith("internet ") else ""
    ok = seen == node_ip
    if not answer:
        detail = f"no answer from {topology.INTERNET_ADDRESS}:{INTERNET_PORT}"
    else:
        detail = f"arrived from {seen or answer!r}, not from its node {node_ip}"
    return Check(source, "internet", "nat", ok, "" if ok else detail)
