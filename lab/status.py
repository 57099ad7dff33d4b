"""`weft lab status`: nodes, blocks, pods and routes as tables."""

from __future__ import annotations

from pyroute2 import IPRoute

from weft.cni.netns import entered
from weft.ipam.local import LocalStore
from weft.lab import netns
from weft.lab.processes import alive
from weft.lab.state import LabState
from weft.table import render


def show(state: LabState) -> str:
    plan = state.plan
    node_rows = []
    for node in state.nodes_present:
        pods = sum(1 for p in state.pods.values() if p["node"] == node.name)
        node_rows.append((node.name, node.address, f"{node.subnet.cidr}",
                          _running(state, f"agent-{node.name}"),
                          _running(state, f"proxy-{node.name}"), pods))
    store = LocalStore(state.datastore)
    block_rows = sorted((b["spec"]["cidr"], b["spec"]["node"], b["spec"].get("pool", "-"))
                        for b in store.list("IPAMBlock"))
    pod_rows = [(name, info["ip"], info["node"]) for name, info in state.pods.items()]
    route_rows = routes(state)
    subnets = {n.subnet.index for n in state.nodes_present}
    return (f"lab {state.name}: {len(state.nodes_present)} nodes on {len(subnets)} of "
            f"{len(plan.subnets)} subnets, "
            f"runtime {state.runtime}, {'ready' if state.ready else 'NOT READY'}\n\n"
            "NODES\n" + render(("node", "address", "subnet", "agent", "proxy", "pods"), node_rows)
            + "\nBLOCKS\n" + render(("cidr", "node", "pool"), block_rows)
            + "\nPODS\n" + render(("pod", "ip", "node"), pod_rows)
            + "\nROUTES to pod blocks (a node's own blocks: blackhole)\n"
            + render(("node", "destination", "type", "via", "dev"), route_rows))


def routes(state: LabState) -> list[tuple[str, ...]]:
    """Each node's routes to pod blocks, its own pods' /32s left out."""
    rows = []
    for node in state.nodes_present:
        if not netns.exists(node.netns):
            continue
        with entered(netns.path(node.netns)), IPRoute() as ipr:
            names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
            for route in ipr.get_routes(family=2, table=254):
                dst = route.get("dst")
                if not dst or not dst.startswith("10.244."):
                    continue
                if route.get("oif") and names.get(route.get("oif"), "").startswith("weft") \
                        and route["dst_len"] == 32:
                    continue  # a local pod's route; the pods table shows those
                kind = {6: "blackhole"}.get(route["type"], "unicast")
                via = route.get("gateway") or "-"
                rows.append((node.name, f"{dst}/{route['dst_len']}", kind, via,
                             names.get(route.get("oif"), "-")))
    return rows


def _running(state: LabState, process: str) -> str:
    pid = state.processes.get(process)
    return f"running ({pid})" if pid and alive(pid) else "stopped"
