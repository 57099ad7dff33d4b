"""`weft lab status` on a Kubernetes lab: what the API server says, and each node's routes."""

from __future__ import annotations

from weft.lab import status
from weft.lab.kube import addons, cluster
from weft.lab.processes import alive
from weft.lab.state import LabState
from weft.table import render


def show(state: LabState) -> str:
    kube = cluster.kube_layout(state)
    processes = [(name, f"running ({pid})" if alive(pid) else "stopped")
                 for name, pid in sorted(state.processes.items())]
    api = cluster.kubectl(kube, "get", "--raw", "/readyz", check=False)
    if api.returncode != 0:
        return (f"lab {state.name}: Kubernetes, API server not answering\n\nPROCESSES\n"
                + render(("process", "state"), processes))
    ready = cluster.node_readiness(kube)
    nodes = cluster.kubectl_json(kube, "get", "nodes")["items"]
    node_rows = []
    for item in nodes:
        name = item["metadata"]["name"]
        address = next((a["address"] for a in item["status"].get("addresses", [])
                        if a["type"] == "InternalIP"), "-")
        annotations = item["metadata"].get("annotations", {})
        node_rows.append((name, address, "Ready" if ready.get(name) else "NotReady",
                          annotations.get("weft.dev/vtep-ip", "-"),
                          item["status"].get("nodeInfo", {}).get("kubeletVersion", "-")))
    blocks = cluster.kubectl_json(kube, "get", "ipamblocks")["items"]
    block_rows = sorted((b["spec"]["cidr"], b["spec"]["node"], b["spec"].get("pool", "-"),
                         b.get("status", {}).get("allocated", "-")) for b in blocks)
    cluster.record_pods(state, kube)
    pod_rows = [(name, info["ip"], info["node"]) for name, info in state.pods.items()]
    weft = cluster.kubectl_json(kube, "-n", "kube-system", "get", "pods",
                                "-l", "app.kubernetes.io/part-of=weft")["items"]
    weft_rows = [(p["metadata"]["name"], p["spec"].get("nodeName", "-"),
                  p["status"].get("phase", "-"),
                  sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])))
                 for p in weft]
    return (f"lab {state.name}: Kubernetes, {len(nodes)} nodes, "
            f"{sum(ready.values())} Ready, {'ready' if state.ready else 'NOT READY'}\n\n"
            "NODES\n" + render(("node", "address", "status", "vtep", "kubelet"), node_rows)
            + "\nWEFT PODS\n" + render(("pod", "node", "phase", "restarts"), weft_rows)
            + "\nBLOCKS\n" + render(("cidr", "node", "pool", "allocated"), block_rows)
            + f"\nPODS ({addons.WORKLOAD_NAMESPACE}/echo)\n"
            + render(("pod", "ip", "node"), pod_rows)
            + "\nROUTES to pod blocks (a node's own blocks: blackhole)\n"
            + render(("node", "destination", "type", "via", "dev"), status.routes(state))
            + "\nPROCESSES\n" + render(("process", "state"), processes))
