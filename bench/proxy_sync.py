"""The service proxy's sync time, next to a bare iptables-restore in the same run.

In a throwaway namespace: a full sync of N Services with 5 endpoints each (weft
renders, applies with iptables-restore --noflush and adds its jumps) against a
bare `iptables-restore --noflush` of exactly the rules weft wrote, in a fresh
namespace; then, at the largest N, one endpoint change (weft's partial sync)
against a bare one-chain `iptables-restore --noflush` on the same full table.

    python3 bench/proxy_sync.py [--services 1000 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, namespace

from weft.agent.iptables import Iptables, restore_text
from weft.agent.proxy.proxier import Proxier
from weft.cni.netns import entered
from weft.lab import netns

ENDPOINTS = 5


class MemoryStore:
    """Just what the proxier reads, held in memory: the bench times the proxy, not YAML."""

    def __init__(self, services: int) -> None:
        self.objects = {"Service": [], "EndpointSlice": []}
        for i in range(services):
            name = f"svc-{i}"
            self.objects["Service"].append({
                "metadata": {"name": name, "namespace": "bench", "resourceVersion": "1"},
                "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"}]}})
            self.objects["EndpointSlice"].append(self.slice(i, 0))

    @staticmethod
    def slice(i: int, generation: int) -> dict:
        return {"metadata": {"name": f"svc-{i}-a", "namespace": "bench",
                             "resourceVersion": str(generation + 1),
                             "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080,
                                                  "protocol": "TCP"}],
                "endpoints": [{"addresses": [f"10.{244 + generation}.{i // 200}.{e + 1 + i % 200}"],
                               "conditions": {"ready": True}} for e in range(ENDPOINTS)]}

    def list(self, kind: str, namespace: str = "", node: str = "") -> list[dict]:
        return self.objects[kind]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def full_sync(services: int) -> tuple[float, float]:
    """(weft's full sync, a bare restore of the same rules in a fresh namespace)."""
    store = MemoryStore(services)
    with namespace("wbp") as ns, entered(netns.path(ns)):
        proxy = Proxier(store, "bench", "10.244.0.0/16", Iptables(), min_interval=0,
                        conntrack_cleanup=False)
        weft = timed(proxy.sync)
        texts = [restore_text(table, chains) for table, chains in proxy.applied().items()]
    with namespace("wbp") as ref, entered(netns.path(ref)):
        bare = sum(timed(lambda t=t: subprocess.run(["iptables-restore", "--noflush"],
                                                     input=t.encode(), check=True))
                   for t in texts)
    return weft, bare


def one_change(services: int) -> tuple[float, float]:
    """A partial sync after one endpoint changes, and a bare one-chain restore."""
    store = MemoryStore(services)
    with namespace("wbp") as ns, entered(netns.path(ns)):
        proxy = Proxier(store, "bench", "10.244.0.0/16", Iptables(), min_interval=0,
                        conntrack_cleanup=False)
        proxy.sync()
        store.objects["EndpointSlice"][services // 2] = MemoryStore.slice(services // 2, 1)
        weft = timed(proxy.sync)
        rules = [f"-A WEFT-BENCH-ONE -p tcp -m tcp -j DNAT --to-destination 10.9.9.{e}:8080"
                 for e in range(1, ENDPOINTS + 1)]
        bare = timed(lambda: Iptables().restore("nat", {"WEFT-BENCH-ONE": rules}))
    return weft, bare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    rows = []
    for n in args.services:
        print(f"  full sync of {n} services x {ENDPOINTS} endpoints", flush=True)
        weft, bare = full_sync(n)
        rows.append((f"full sync, {n} services", weft, bare, "iptables-restore of the same rules"))
    largest = max(args.services)
    print(f"  one endpoint change at {largest} services", flush=True)
    weft, bare = one_change(largest)
    rows.append((f"one endpoint change, {largest} services", weft, bare,
                 "one-chain iptables-restore --noflush"))
    print(f"\nmachine: {machine()}\n")
    print("| sync | weft | reference | ratio | reference is |\n|---|---|---|---|---|")
    for label, w, b, what in rows:
        print(f"| {label} | {w * 1000:.0f} ms | {b * 1000:.0f} ms | {w / b:.2f}x | {what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
