"""The agent's time to program 1,000 remote blocks, next to `ip -batch` of the same
routes, neighbours and FDB entries measured in the same run.

A node namespace runs a real agent on the local datastore; 1,000 other nodes, each
in another subnet (so each needs a VXLAN route, a neighbour and an FDB entry), and
their blocks are written to the datastore at once. The clock runs from the write
to the moment the kernel holds all 1,000 routes.

    python3 bench/route_programming.py [--blocks 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, namespace

from weft.agent.dataplane import PROTO
from weft.ipam.local import LocalStore
from weft.lab import netns, wiring


def remote(i: int) -> tuple[str, str, str, str]:
    """(block, node IP, vtep IP, vtep MAC) of remote node i, outside 172.31.0.0/16."""
    block = f"10.{100 + i // 256}.{i % 256}.0/26"
    return (block, f"172.30.{i // 250}.{i % 250 + 1}", f"10.{100 + i // 256}.{i % 256}.1",
            f"02:00:00:00:{i // 256:02x}:{i % 256:02x}")


def count_routes(ns: str) -> int:
    with netns.iproute(ns) as ipr:
        return len(ipr.get_routes(family=2, table=254, proto=PROTO))


def weft_agent(blocks: int) -> float:
    with namespace("wbr") as ns, tempfile.TemporaryDirectory() as work:
        wiring.stub_underlay(ns, "172.31.0.1")
        store = LocalStore(f"{work}/ds")
        agent = netns.popen(ns, [sys.executable, "-m", "weft", "agent", "--node-name", "me",
                                 "--datastore-path", f"{work}/ds", "--state-dir",
                                 f"{work}/state", "--socket", f"{work}/cni.sock",
                                 "--cni-conf-dir", f"{work}/net.d", "--resync-seconds", "600"],
                            stderr=subprocess.DEVNULL)
        try:
            while not Path(f"{work}/net.d/10-weft.conflist").exists():
                time.sleep(0.05)
            staged = LocalStore(f"{work}/staged")
            for i in range(blocks):
                block, node_ip, vtep_ip, mac = remote(i)
                staged.create({"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": f"n{i}", "annotations": {"weft.dev/node-ip": node_ip,
                                                     "weft.dev/vtep-ip": vtep_ip,
                                                     "weft.dev/vtep-mac": mac}}})
                staged.create({"apiVersion": "weft.dev/v1", "kind": "IPAMBlock",
                               "metadata": {"name": f"b{i}"},
                               "spec": {"cidr": block, "node": f"n{i}", "pool": "default"}})
            own = count_routes(ns)
            started = time.perf_counter()
            for kind in ("nodes", "ipamblocks"):  # two renames: the write is near-atomic
                for path in (Path(f"{work}/staged") / kind).iterdir():
                    path.rename(Path(f"{work}/ds") / kind / path.name)
            while count_routes(ns) < own + blocks:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            assert store.list("IPAMBlock")
            return elapsed
        finally:
            agent.terminate()
            agent.wait()


def ip_batch(blocks: int) -> float:
    with namespace("wbr") as ns:
        wiring.stub_underlay(ns, "172.31.0.1")
        netns.run(ns, ["ip", "link", "add", "weft.vxlan", "type", "vxlan", "id", "4096",
                       "dstport", "4789", "local", "172.31.0.1", "dev", "eth0", "nolearning"])
        netns.run(ns, ["ip", "link", "set", "weft.vxlan", "up"])
        lines, fdb = [], []
        for i in range(blocks):
            block, node_ip, vtep_ip, mac = remote(i)
            lines.append(f"neigh replace {vtep_ip} lladdr {mac} dev weft.vxlan nud permanent")
            lines.append(f"route replace {block} via {vtep_ip} dev weft.vxlan onlink "
                         f"proto {PROTO}")
            fdb.append(f"fdb add {mac} dev weft.vxlan dst {node_ip} self permanent")
        started = time.perf_counter()
        netns.run(ns, ["bridge", "-batch", "-"], input="\n".join(fdb).encode())
        netns.run(ns, ["ip", "-batch", "-"], input="\n".join(lines).encode())
        elapsed = time.perf_counter() - started
        assert count_routes(ns) == blocks
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=1000)
    args = parser.parse_args()
    print(f"  ip -batch / bridge -batch: {args.blocks} routes, neighbours, FDB entries",
          flush=True)
    reference = ip_batch(args.blocks)
    print(f"  weft agent: {args.blocks} remote nodes and blocks appear in the datastore",
          flush=True)
    weft = weft_agent(args.blocks)
    print(f"\nmachine: {machine()}\n")
    print("| what | seconds | vs ip -batch |\n|---|---|---|")
    print(f"| ip -batch + bridge -batch (reference) | {reference:.2f} | 1.00x |")
    print(f"| weft agent (notice, read datastore, diff, program) | {weft:.2f} | "
          f"{weft / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
