"""The service proxy's sync time, next to a bare iptables-restore in the same run.

In a throwaway namespace, at each N: a full sync of N Services with 5 endpoints
each (weft renders, applies with iptables-restore --noflush and adds its jumps)
against a bare `iptables-restore --noflush` of exactly the rules weft wrote, in a
fresh namespace; then, on that full table, one endpoint change (one Service's
EndpointSlice gets 5 new addresses: weft's partial sync) against a bare one-chain
`iptables-restore --noflush` of 5 rules. The change is made ROUNDS times, each on
another Service, taking turns with the reference; the medians are compared.

    python3 bench/proxy_sync.py [--services 1000 10000]
"""

from __future__ import annotations

import argparse
import statistics
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
ROUNDS = 5


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


def sync_and_change(services: int) -> tuple[float, float, float, float]:
    """(weft's full sync, a bare restore of the same rules in a fresh namespace,
    weft's partial sync after one endpoint change, a bare one-chain restore)."""
    store = MemoryStore(services)
    with namespace("wbp") as ns, entered(netns.path(ns)):
        proxy = Proxier(store, "bench", "10.244.0.0/16", Iptables(), min_interval=0,
                        conntrack_cleanup=False)
        weft_full = timed(proxy.sync)
        texts = [restore_text(table, chains) for table, chains in proxy.applied().items()]
        weft_change, bare_change = one_change(store, proxy, services)
    with namespace("wbp") as ref, entered(netns.path(ref)):
        bare_full = sum(timed(lambda t=t: subprocess.run(["iptables-restore", "--noflush"],
                                                          input=t.encode(), check=True))
                        for t in texts)
    return weft_full, bare_full, weft_change, bare_change


def one_change(store: MemoryStore, proxy: Proxier, services: int) -> tuple[float, float]:
    """Medians of weft's partial sync after one endpoint change, and of a bare one-chain
    restore, taking turns."""
    weft, bare = [], []
    rules = [f"-A WEFT-BENCH-ONE -p tcp -m tcp -j DNAT --to-destination 10.9.9.{e}:8080"
             for e in range(1, ENDPOINTS + 1)]
    for i in range(services // 2, services // 2 + ROUNDS):
        store.objects["EndpointSlice"][i] = MemoryStore.slice(i, 1)
        weft.append(timed(proxy.sync))
        bare.append(timed(lambda: Iptables().restore("nat", {"WEFT-BENCH-ONE": rules})))
    return statistics.median(weft), statistics.median(bare)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    rows = []
    for n in args.services:
        print(f"  full sync of {n} services x {ENDPOINTS} endpoints, then one endpoint "
              f"change ({ROUNDS} times)", flush=True)
        weft_full, bare_full, weft_change, bare_change = sync_and_change(n)
        rows += [(f"full sync, {n} services", weft_full, bare_full,
                  "iptables-restore of the same rules"),
                 (f"one endpoint change, {n} services", weft_change, bare_change,
                  "one-chain iptables-restore --noflush")]
    print(f"\nmachine: {machine()}\n")
    print("| sync | weft | reference | ratio | reference is |\n|---|---|---|---|---|")
    for label, w, b, what in rows:
        print(f"| {label} | {w * 1000:.0f} ms | {b * 1000:.0f} ms | {w / b:.2f}x | {what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
