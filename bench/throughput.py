"""iperf3 TCP throughput pod to pod, next to a plain veth pair measured in the same run.

Paths: two pods on one node; pods on two nodes of one subnet (direct routing);
pods on nodes in different subnets (VXLAN); and the reference, a bare veth pair
between two namespaces (the kernel's own veth path, no routing, no tunnel).

    python3 bench/throughput.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from weft.lab import build, netns


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from client to server."""
    server = netns.popen(server_ns, ["iperf3", "-s", "-1", "-p", "5201"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            probe = netns.run(client_ns, ["iperf3", "-c", address, "-t", str(seconds), "-J"],
                              check=False, timeout=seconds + 30)
            report = json.loads(probe.stdout or b"{}")
            if probe.returncode == 0 and "sum_received" in report.get("end", {}):
                return report["end"]["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.1)  # the server is not listening yet
        raise RuntimeError(f"iperf3 to {address} failed: {probe.stdout.decode()[-300:]}")
    finally:
        server.kill()
        server.wait()


def veth_reference(seconds: int) -> float:
    a, b = f"wbv{uuid.uuid4().hex[:6]}a", f"wbv{uuid.uuid4().hex[:6]}b"
    netns.create(a)
    netns.create(b)
    try:
        netns.run(a, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                      "netns", netns.path(b)])
        for ns, address in ((a, "192.0.2.1/24"), (b, "192.0.2.2/24")):
            netns.run(ns, ["ip", "addr", "add", address, "dev", "eth0"])
            netns.run(ns, ["ip", "link", "set", "eth0", "up"])
        return iperf(b, a, "192.0.2.2", seconds)
    finally:
        netns.remove(a)
        netns.remove(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    name = f"b{uuid.uuid4().hex[:6]}"
    print("building a 3-node lab (node1 and node2 share a subnet, node3 is across)", flush=True)
    state = build.up(name, 3, 2, 2, "netns", lambda _m: None)
    try:
        def pod(p: str) -> tuple[str, str]:
            full = f"{name}-{p}"
            return full, state.pods[full]["ip"]

        paths = {
            "same node (veth, routed)": ("node1-pod1", "node1-pod0"),
            "across nodes, direct": ("node2-pod0", "node1-pod0"),
            "across nodes, VXLAN": ("node3-pod0", "node1-pod0"),
        }
        results = {"plain veth pair (reference)": veth_reference(args.seconds)}
        for label, (server, client) in paths.items():
            print(f"  {label}", flush=True)
            server_ns, address = pod(server)
            results[label] = iperf(server_ns, pod(client)[0], address, args.seconds)
    finally:
        build.down(name, lambda _m: None)
    ref = results["plain veth pair (reference)"]
    print(f"\nmachine: {machine()}\none TCP stream, {args.seconds}s each\n")
    print("| path | Gbit/s | vs plain veth |\n|---|---|---|")
    for label, gbits in results.items():
        print(f"| {label} | {gbits:.2f} | {gbits / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
