"""The agent's time to program 1,000 remote blocks, next to `ip -batch` of the same
routes, neighbours and FDB entries measured in the same run.

1,000 other nodes, each in another subnet (so each needs a VXLAN route, a neighbour
and an FDB entry), and their blocks appear in the datastore:
- `local`: a node namespace runs a real agent; the objects are written at once (two
  directory renames). The clock runs from the write to the moment the kernel holds
  all 1,000 routes.
- `kubernetes` (with --kubernetes; needs `weft lab build-kubernetes`): a one-node
  Kubernetes lab runs weft as installed from manifests/weft.yaml; 2,000 objects are
  created through the API server, 8 requests at a time. The clock runs from the last
  create's answer to the moment the node's kernel holds all 1,000 routes (the time
  from the first create is printed too).

Each `local` figure and the reference is the median of --runs runs (default 3).

    python3 bench/route_programming.py [--blocks 1000] [--runs 3] [--kubernetes]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, namespace
from pyroute2.netlink.rtnl import RTM_NEWROUTE, RTMGRP_IPV4_ROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from weft.agent.dataplane import PROTO
from weft.cni import rtnl
from weft.cni.netns import entered
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


class RouteWatch:
    """Listens in `ns` for the kernel's announcements of new weft routes, so the clock
    stops when the last one is in, not at the next poll of a dump (decoding 1,000 routes
    takes pyroute2 about a tenth of a second, a poll's worth of error)."""

    def __init__(self, ns: str, want: int) -> None:
        with entered(netns.path(ns)):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, RTMGRP_IPV4_ROUTE))
        self.sock.settimeout(0.5)
        self.want, self.seen, self.done = want, set(), threading.Event()
        self.at = 0.0
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            now = (time.perf_counter(), time.time())
            for kind, _, message in rtnl.messages_of(data):
                if kind != RTM_NEWROUTE:
                    continue
                route = rtmsg(message)
                route.decode()
                if route["proto"] == PROTO:
                    self.seen.add((route.get_attr("RTA_DST"), route["dst_len"]))
            if len(self.seen) >= self.want:
                self.at = now
                self.done.set()

    def wait(self, timeout: float = 120) -> tuple[float, float]:
        """(perf_counter, time.time) when the last wanted route was announced."""
        if not self.done.wait(timeout):
            raise RuntimeError(f"only {len(self.seen)} of {self.want} routes in {timeout} s")
        self.sock.close()
        return self.at


def remote_objects(i: int) -> tuple[dict, dict]:
    """Remote node i's Node, annotated as its agent would, and its block."""
    block, node_ip, vtep_ip, mac = remote(i)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": f"n{i}", "annotations": {"weft.dev/node-ip": node_ip,
                                         "weft.dev/vtep-ip": vtep_ip,
                                         "weft.dev/vtep-mac": mac}}}
    ipam_block = {"apiVersion": "weft.dev/v1", "kind": "IPAMBlock",
                  "metadata": {"name": f"b{i}"},
                  "spec": {"cidr": block, "node": f"n{i}", "pool": "default"}}
    return node, ipam_block


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
                for obj in remote_objects(i):
                    staged.create(obj)
            watch = RouteWatch(ns, blocks)
            started = time.perf_counter()
            for kind in ("nodes", "ipamblocks"):  # renames: the write is near-atomic
                for path in (Path(f"{work}/staged") / kind).iterdir():
                    path.rename(Path(f"{work}/ds") / kind / path.name)
            elapsed = watch.wait()[0] - started
            assert count_routes(ns) >= blocks and store.list("IPAMBlock")
            return elapsed
        finally:
            agent.terminate()
            agent.wait()


def create_through_api(kubeconfig: str, blocks: int) -> None:
    """Run inside the control plane's namespace: create the objects, print when the
    first and the last create were answered."""
    from weft.ipam.kubernetes import KubernetesStore

    store = KubernetesStore(kubeconfig)
    objects = [obj for i in range(blocks) for obj in remote_objects(i)]
    with ThreadPoolExecutor(8) as pool:
        first = time.time()
        list(pool.map(store.create, objects))
    print(json.dumps({"first": first, "last": time.time()}))


def weft_agent_kubernetes(blocks: int) -> tuple[float, float]:
    """(from the last create, from the first) to all routes on the lab's node."""
    lab = f"wbk{os.getpid() % 100000}"
    subprocess.run(["weft", "lab", "up", "--kubernetes", "--name", lab, "--nodes", "1",
                    "--subnets", "1", "--pods-per-node", "0"], check=True)
    try:
        kubeconfig = subprocess.run(["weft", "lab", "kubeconfig", "--name", lab],
                                    check=True, capture_output=True, text=True).stdout.strip()
        node = f"{lab}-node1"
        watch = RouteWatch(node, blocks)
        created = netns.run(f"{lab}-cp", [sys.executable, __file__, "--create-through-api",
                                          kubeconfig, "--blocks", str(blocks)],
                            timeout=600)
        times = json.loads(created.stdout.decode().strip().splitlines()[-1])
        done = watch.wait(600)[1]
        return done - times["last"], done - times["first"]
    finally:
        subprocess.run(["weft", "lab", "down", "--name", lab], check=False)


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
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kubernetes", action="store_true",
                        help="also measure on the kubernetes datastore (a Kubernetes lab)")
    parser.add_argument("--create-through-api", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.create_through_api:
        create_through_api(args.create_through_api, args.blocks)
        return 0
    print(f"  ip -batch / bridge -batch: {args.blocks} routes, neighbours, FDB entries",
          flush=True)
    reference = statistics.median(ip_batch(args.blocks) for _ in range(args.runs))
    print(f"  weft agent: {args.blocks} remote nodes and blocks appear in the datastore",
          flush=True)
    weft = statistics.median(weft_agent(args.blocks) for _ in range(args.runs))
    kubernetes = None
    if args.kubernetes:
        print(f"  weft on a Kubernetes lab: {args.blocks} Nodes and IPAMBlocks created "
              "through the API server", flush=True)
        kubernetes = weft_agent_kubernetes(args.blocks)
    print(f"\nmachine: {machine()}\n")
    print("| what | seconds | vs ip -batch |\n|---|---|---|")
    print(f"| ip -batch + bridge -batch (reference) | {reference:.2f} | 1.00x |")
    print(f"| weft agent, `local` (notice, read datastore, diff, program) | {weft:.2f} | "
          f"{weft / reference:.2f}x |")
    if kubernetes:
        after_last, after_first = kubernetes
        print(f"| weft agent, `kubernetes`, from the last create | {after_last:.2f} | "
              f"{after_last / reference:.2f}x |")
        print(f"| (from the first create: the creates themselves took "
              f"{after_first - after_last:.2f} s) | {after_first:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
