"""NetworkPolicy at scale: time from writing a policy to its enforcement, and throughput
with 1,000 policies in place against none, measured in the same run.

A lab of 3 nodes in 2 subnets holds 300 pods (Pod objects with labels, each with its
address from a real CNI ADD) in 10 namespaces and 1,000 policies over them. Two of the
pods talk: the client C (node 1) and the server S (node 2), S isolated by a deny-all
policy of its namespace.
- Enforcement latency: a policy allowing C to S:80 is written; a prober in C connects
  every 10 ms and the clock stops at its first answer. The policy is deleted, the
  prober waits for the refusals to be back, and the next trial begins.
- Throughput: one iperf3 TCP stream C -> S with only S's deny-all and allowing
  policies, and with the other 1,000 added; same pods, same path. The states
  alternate --runs times (the 999 are written, measured, deleted), and the best run of
  each counts, so that a busy machine's noise does not pass for a difference.
- Bulk changes: the time from the first of the 999 writes to every agent having
  synced them all, and from deleting them all at once to every agent having synced
  that, each time the states alternate; and how many chains the busiest node's
  table holds.

    python3 bench/policy_enforcement.py [--pods 300] [--policies 1000] [--trials 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, percentile
from throughput import iperf

from weft.cni.netns import entered
from weft.ipam.local import LocalStore
from weft.lab import build, netns, pods
from weft.lab.state import LabState

NAMESPACES = 10
APPS = 30
PROBE = """
import socket, sys, time
host, want = sys.argv[1], sys.argv[2] == "open"
while True:
    s = socket.socket(); s.settimeout(0.5)
    try:
        s.connect((host, 80)); s.recv(64); is_open = True
    except OSError:
        is_open = False
    finally:
        s.close()
    if is_open == want:
        print(time.monotonic(), flush=True); break
    time.sleep(0.01)
"""


def policy(namespace: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def background_policies(count: int) -> list[dict]:
    """Policies over the 300 pods: by app, from a tier or a team's namespaces, on a port
    of their own and the named port http."""
    return [policy(f"ns{i % NAMESPACES}", f"p{i}", {
        "podSelector": {"matchLabels": {"app": f"a{i % APPS}"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": f"t{i % 3}"}}},
                              {"namespaceSelector": {"matchLabels": {"team": f"t{(i + 1) % 3}"}}}],
                     "ports": [{"port": 8000 + i % 50}, {"port": "http"}]}]})
        for i in range(count)]


def synced(state: LabState, policies: int) -> bool:
    """Every agent's last sync saw `policies` policies (its weft_network_policies)."""
    for node in state.nodes_present:
        try:
            with entered(netns.path(node.netns)):
                text = urllib.request.urlopen("http://127.0.0.1:9645/metrics",
                                              timeout=30).read()
        except OSError:  # busy: ask again
            return False
        line = next((x for x in text.decode().splitlines()
                     if x.startswith("weft_network_policies ")), "")
        if not line or float(line.split()[1]) != policies:
            return False
    return True


def wait_synced(state: LabState, policies: int) -> None:
    deadline = time.monotonic() + 300
    while not synced(state, policies):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agents did not sync {policies} policies in 300 s")
        time.sleep(0.5)


def chain_count(node: str) -> int:
    listed = netns.run(node, ["nft", "-j", "list", "chains", "inet"]).stdout
    return sum(1 for item in json.loads(listed)["nftables"] if "chain" in item)


def time_to(state: LabState, client: str, server_ip: str, want: str, act) -> float:
    """Seconds from `act()` to the prober in `client` seeing the port `want` (open/closed)."""
    prober = netns.popen(client, [sys.executable, "-c", PROBE, server_ip, want],
                         stdout=subprocess.PIPE)
    time.sleep(0.3)  # the prober is running (and seeing the old state) first
    started = time.monotonic()
    act()
    out, _ = prober.communicate(timeout=120)
    return float(out.decode().strip()) - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=5, help="each iperf3 run")
    parser.add_argument("--runs", type=int, default=4, help="iperf3 runs in each state")
    args = parser.parse_args()
    name = f"wbp{uuid.uuid4().hex[:5]}"
    print(f"  lab {name}: 3 nodes, {args.pods} pods, {args.policies} policies", flush=True)
    try:
        state = build.up(name, 3, 2, 0, "netns", lambda _m: None)
        store = LocalStore(state.datastore)
        nodes = [n.name for n in state.nodes_present]
        for i in range(NAMESPACES):
            store.apply(pods.namespace_object(f"ns{i}", {"team": f"t{i % 3}"}))
        store.apply(pods.namespace_object("bench"))
        build.add_pod(state, f"{name}-c", nodes[0], "bench", "c", {"role": "client"},
                      tcp=[], udp=[])
        server_ip = build.add_pod(state, f"{name}-s", nodes[1], "bench", "s",
                                  {"role": "server"}, tcp=[80], udp=[])
        for i in range(args.pods - 2):
            if i % 50 == 0:
                print(f"  pods {i}/{args.pods - 2}", flush=True)
            build.add_pod(state, f"{name}-p{i}", nodes[i % 3], f"ns{i % NAMESPACES}", f"p{i}",
                          {"app": f"a{i % APPS}", "tier": f"t{i % 3}"}, tcp=[], udp=[],
                          named={"http": ("TCP", 8080)})
        store.apply(policy("bench", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        allow = policy("bench", "allow-c", {
            "podSelector": {"matchLabels": {"role": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]})
        store.apply(allow)
        wait_synced(state, 2)
        client_ns = f"{name}-c"
        background = background_policies(args.policies - 1)
        bulk_add, bulk_delete = [], []

        def add_background() -> None:
            written = time.monotonic()
            for obj in background:
                store.apply(obj)
            wait_synced(state, args.policies + 1)
            bulk_add.append(time.monotonic() - written)

        def delete_background() -> None:
            deleted = time.monotonic()
            for obj in background:
                store.delete("NetworkPolicy", obj["metadata"]["name"],
                             obj["metadata"]["namespace"])
            wait_synced(state, 2)
            bulk_delete.append(time.monotonic() - deleted)

        # The two states alternate, run by run: a drift of the machine's speed falls on
        # both alike.
        without, with_policies = [], []
        for run in range(args.runs):
            without.append(iperf(f"{name}-s", client_ns, server_ip, args.seconds))
            add_background()
            with_policies.append(iperf(f"{name}-s", client_ns, server_ip, args.seconds))
            chains = max(chain_count(node) for node in nodes)
            if run < args.runs - 1:
                delete_background()
            print(f"  throughput runs {run + 1}/{args.runs}", flush=True)
        store.delete("NetworkPolicy", "allow-c", "bench")
        wait_synced(state, args.policies)
        latencies = []
        for trial in range(args.trials):
            latencies.append(time_to(state, client_ns, server_ip, "open",
                                     lambda: store.apply(allow)))
            time_to(state, client_ns, server_ip, "closed",
                    lambda: store.delete("NetworkPolicy", "allow-c", "bench"))
            if trial % 10 == 9:
                print(f"  trials {trial + 1}/{args.trials}", flush=True)
        store.apply(allow)
        wait_synced(state, args.policies + 1)
        delete_background()
    finally:
        build.down(name, lambda _m: None)
    print(f"\nmachine: {machine()}\n")
    print("| what | value |\n|---|---|")
    print(f"| policy written -> enforced, p50 ({args.trials} trials) | "
          f"{percentile(latencies, 50) * 1000:.0f} ms |")
    print(f"| policy written -> enforced, p99 | {percentile(latencies, 99) * 1000:.0f} ms |")
    print(f"| one TCP stream C -> S, {args.policies} policies (best of {args.runs}) | "
          f"{max(with_policies):.2f} Gbit/s |")
    print(f"| the same, no other policy (reference) | {max(without):.2f} Gbit/s |")
    print(f"| ratio | {max(with_policies) / max(without):.2f}x |")
    print(f"| {args.policies - 1} policies written one by one -> every agent synced "
          f"(median of {len(bulk_add)}) | {statistics.median(bulk_add):.1f} s |")
    print(f"| the same deleted at once -> every agent synced (median of {len(bulk_delete)}) | "
          f"{statistics.median(bulk_delete):.1f} s |")
    print(f"| chains in the busiest node's table | {chains} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
