"""Time from creating a 30-pod Deployment to all 30 Ready, with weft and with ptp + host-local.

On a Kubernetes lab (`weft lab up --kubernetes`; one is started and removed if none is
given), every pod pinned to one node. The reference is the same cluster and node with
the containernetworking `ptp` plugin and `host-local` IPAM as its CNI: a conflist that
sorts before weft's is put in the node's /etc/cni/net.d, which containerd then uses for
new pods, and taken away after. Rounds alternate weft, reference, weft, ... so drift on
the machine hits both alike; the medians and their ratio are printed.

    python3 bench/kube_pod_startup.py [--lab NAME] [--rounds 3] [--pods 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import netaddr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from weft.lab.kube import addons, cluster, components
from weft.lab.state import LabState, load

REFERENCE_CONFLIST = "00-bench-ptp.conflist"
REFERENCE_RANGE = "10.250.0.0/24"  # outside weft's pool: these pods are only probed locally
POD_POOL = "10.244.0.0/16"


def reference_conflist() -> dict:
    return {"cniVersion": "1.0.0", "name": "bench-ptp", "plugins": [
        {"type": "ptp", "ipMasq": False, "mtu": 1450,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": REFERENCE_RANGE}]],
                  "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": "/var/lib/cni/bench-ptp"}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def deployment(name: str, node: str, replicas: int) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": addons.WORKLOAD_NAMESPACE},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "nodeName": node, "terminationGracePeriodSeconds": 0,
                         "containers": [{
                             "name": "netexec", "image": components.AGNHOST_IMAGE,
                             "args": ["netexec", "--http-port=8080"],
                             "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                "periodSeconds": 1}}]}}}}


def time_to_ready(state: LabState, node: str, replicas: int, pod_range: str) -> float:
    """Seconds from creating the Deployment to all its pods Ready; its pods' addresses
    must come from `pod_range`, so the round measured the CNI it says it did."""
    kube = cluster.kube_layout(state)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    cluster.apply(kube, [deployment(name, node, replicas)])
    while True:
        status = cluster.kubectl_json(kube, "-n", addons.WORKLOAD_NAMESPACE, "get",
                                      "deploy", name).get("status", {})
        if status.get("readyReplicas", 0) == replicas:
            elapsed = time.monotonic() - started
            pods = cluster.kubectl_json(kube, "-n", addons.WORKLOAD_NAMESPACE, "get", "pods",
                                        "-l", f"app={name}")["items"]
            wrong = [p["status"].get("podIP") for p in pods
                     if netaddr.IPAddress(p["status"]["podIP"]) not in netaddr.IPNetwork(pod_range)]
            if wrong:
                raise SystemExit(f"{name}: pods got {wrong}, outside {pod_range}")
            break
        if time.monotonic() - started > 300:
            raise SystemExit(f"{name}: {status.get('readyReplicas', 0)} of {replicas} "
                             "pods Ready after 300 s")
        time.sleep(0.2)
    cluster.kubectl(kube, "-n", addons.WORKLOAD_NAMESPACE, "delete", "deploy", name,
                    "--wait=true")
    cluster.kubectl(kube, "-n", addons.WORKLOAD_NAMESPACE, "wait", "--for=delete", "pods",
                    "-l", f"app={name}", "--timeout=120s", check=False, timeout=150)
    return elapsed


def set_reference(state: LabState, node: str, on: bool) -> None:
    """Put ptp's conflist in front of weft's on `node`, or take it away again."""
    conf_dir = Path(f"/proc/{state.processes[f'root-{node}']}/root/etc/cni/net.d")
    path = conf_dir / REFERENCE_CONFLIST
    if on:
        path.write_text(json.dumps(reference_conflist()))
    else:
        path.unlink(missing_ok=True)
    time.sleep(2)  # containerd reloads the directory when it changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="", help="a running Kubernetes lab (default: start one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pods", type=int, default=30)
    args = parser.parse_args()
    name = args.lab or f"b{uuid.uuid4().hex[:6]}"
    if not args.lab:
        subprocess.run([sys.executable, "-m", "weft", "lab", "up", "--kubernetes", "--name",
                        name, "--nodes", "1", "--subnets", "1", "--pods-per-node", "0"],
                       check=True)
    try:
        state = load(name)
        assert state is not None and state.runtime == cluster.RUNTIME
        node = state.nodes_present[-1].name
        times: dict[str, list[float]] = {"weft": [], "ptp + host-local": []}
        for round_ in range(args.rounds):
            for plugin in times:
                set_reference(state, node, plugin != "weft")
                try:
                    pod_range = POD_POOL if plugin == "weft" else REFERENCE_RANGE
                    times[plugin].append(time_to_ready(state, node, args.pods, pod_range))
                finally:
                    set_reference(state, node, False)
                print(f"round {round_ + 1}: {plugin}: {times[plugin][-1]:.2f} s", flush=True)
    finally:
        if not args.lab:
            subprocess.run([sys.executable, "-m", "weft", "lab", "down", "--name", name],
                           check=False, capture_output=True)
    print(f"\n{machine()}")
    print(f"{args.pods} pods on one node, Deployment created -> all Ready, "
          f"median of {args.rounds}:")
    reference = statistics.median(times["ptp + host-local"])
    for plugin, samples in times.items():
        median = statistics.median(samples)
        print(f"  {plugin:18} {median:6.2f} s  ({', '.join(f'{s:.2f}' for s in samples)})"
              f"  {median / reference:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
