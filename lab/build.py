"""`weft lab up` and `weft lab down`: build a cluster of namespaces, and remove it whole.

Everything stays inside the lab's own namespaces: nothing is linked to the
machine's namespace or its interfaces. `down` finds what to remove from the
names the plan gives and from the kernel itself (namespaces and the processes
inside them), so it also cleans up after an `up` that failed halfway.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from weft.agent.dataplane import LinuxDataplane
from weft.agent.install import CONFLIST_NAME, install_binaries
from weft.ipam.local import LocalStore
from weft.ipam.pools import DEFAULT_POOL
from weft.lab import netns, podman, pods, services, topology, wiring
from weft.lab.kube import teardown
from weft.lab.libcni import Runtime
from weft.lab.processes import alive, processes_in, spawn, stop
from weft.lab.state import LabState, lab_root, load

Progress = Callable[[str], None]
INTERNET_PORT = 8080
STOP_ROUNDS = 5  # `down` stops what the lab's namespaces hold, looking again up to this often
SYSTEM_CNI_PATH = "/usr/lib/cni"


class LabError(Exception):
    """The lab could not be built or reached; the message says why."""


def check_can_build(name: str, subnets: int, runtime: str, vxlan_mode: str) -> None:
    """Refuse, before anything is made, what cannot work."""
    if load(name) is not None or any(topology.owned_by(name, n) for n in netns.listed(name)):
        raise LabError(f"lab {name!r} already exists; run 'weft lab down --name {name}' first")
    if runtime == "podman" and not podman.available():
        raise LabError("--runtime podman needs podman, runc and busybox-static: install them "
                       "with './install.sh --test' (or apt-get install podman runc "
                       "busybox-static)")
    if vxlan_mode == "Never" and subnets > 1:
        raise LabError(f"--vxlan-mode Never cannot route pods across {subnets} subnets: "
                       "without a tunnel the router between them knows no pod routes; use "
                       "--subnets 1 with Never, or CrossSubnet or Always")


def up(name: str, nodes: int, subnets: int, pods_per_node: int, runtime: str,
       progress: Progress, vxlan_mode: str = "CrossSubnet") -> LabState:
    check_can_build(name, subnets, runtime, vxlan_mode)
    state = LabState(name, nodes, subnets, pods_per_node, runtime)
    plan = state.plan
    state.save()
    try:
        build_network(state, plan, progress)
        _start_agents(state, plan, vxlan_mode, progress)
        _make_pods(state, plan, progress)
        _start_proxies(state, progress)
        apply_services(state)
        progress("waiting for every node to route every block and proxy the echo Service")
        wait_converged(state)
        wait_for_service(state, services.CLUSTER_IP)
    except BaseException:
        progress("build failed: removing what was made")
        down(name, lambda _msg: None)
        raise
    state.ready = True
    state.save()
    return state


def build_network(state: LabState, plan: topology.LabPlan, progress: Progress) -> None:
    infra = [plan.internet, plan.router, *(s.switch for s in plan.subnets)]
    progress(f"creating {len(infra)} infrastructure and {len(plan.nodes)} node namespaces")
    for name in infra + [n.netns for n in plan.nodes]:
        netns.create(name)
    for subnet in plan.subnets:
        wiring.switch(subnet.switch)
        wiring.wire(plan.router, f"sw{subnet.index}", subnet.switch, "router", subnet.switch)
        wiring.address(plan.router, f"sw{subnet.index}", f"{subnet.gateway}/24")
    progress("wiring the router and the internet")
    wiring.wire(plan.router, "inet0", plan.internet, "eth0")
    wiring.address(plan.router, "inet0", f"{plan.router_internet_address}/30")
    wiring.address(plan.internet, "eth0", f"{plan.internet_link_address}/30")
    wiring.address(plan.internet, "lo", f"{topology.INTERNET_ADDRESS}/32")
    wiring.sysctls(plan.router, {"net/ipv4/ip_forward": "1"})
    wiring.default_route(plan.internet, plan.router_internet_address)
    wiring.route(plan.router, f"{topology.INTERNET_ADDRESS}/32", plan.internet_link_address)
    for node in plan.nodes:
        progress(f"wiring {node.name} ({node.address}) to switch {node.subnet.index}")
        wiring.wire(node.netns, "eth0", node.subnet.switch, f"n{node.index}", node.subnet.switch)
        wiring.address(node.netns, "eth0", f"{node.address}/24")
        wiring.default_route(node.netns, node.subnet.gateway)
        wiring.sysctls(node.netns, {"net/ipv4/ip_forward": "1",
                                   "net/ipv6/conf/all/forwarding": "1"})
    state.processes["internet-echo"] = _spawn(
        netns.path(plan.internet), _echo_command("internet", tcp=[INTERNET_PORT]),
        state.root / "internet-echo.log")
    state.save()


def _agent_command(state: LabState, node: str) -> list[str]:
    directory = state.node_dir(node)
    return [sys.executable, "-m", "weft", "agent", "--node-name", node,
            "--datastore", "local", "--datastore-path", str(state.datastore),
            "--state-dir", str(directory / "state"), "--socket", str(directory / "cni.sock"),
            "--cni-conf-dir", str(directory / "net.d"), "--default-pool", topology.POD_POOL,
            "--health-address", "127.0.0.1:9645", "--resync-seconds", "5"]


def _start_agents(state: LabState, plan: topology.LabPlan, vxlan_mode: str,
                  progress: Progress) -> None:
    install_binaries(state.bin_dir)
    LocalStore(state.datastore).create({
        "apiVersion": "weft.dev/v1", "kind": "IPPool", "metadata": {"name": "default"},
        "spec": {**DEFAULT_POOL, "cidr": topology.POD_POOL, "vxlanMode": vxlan_mode}})
    for node in plan.nodes:
        progress(f"starting the agent on {node.name}")
        state.node_dir(node.name).mkdir(parents=True, exist_ok=True)
        state.processes[f"agent-{node.name}"] = _spawn(
            netns.path(node.netns), _agent_command(state, node.name),
            state.node_dir(node.name) / "agent.log")
    state.save()
    progress("waiting for every agent's first reconcile")
    for node in plan.nodes:
        wait_for_agent(state, node.name)


def wait_for_agent(state: LabState, node: str, timeout: float = 60) -> None:
    """An agent writes its CNI config once its first reconcile is done."""
    ready = state.node_dir(node) / "net.d" / CONFLIST_NAME
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if time.monotonic() > deadline or not alive(state.processes[f"agent-{node}"]):
            log = state.node_dir(node) / "agent.log"
            raise LabError(f"the agent on {node} did not become ready; see {log}")
        time.sleep(0.05)


def wait_converged(state: LabState, timeout: float = 30) -> None:
    """Until every node holds a route for every block in the datastore."""
    store = LocalStore(state.datastore)
    deadline = time.monotonic() + timeout
    while True:
        blocks = {b["spec"]["cidr"] for b in store.list("IPAMBlock")}
        missing = {}
        for node in state.nodes_present:
            with netns.iproute(node.netns) as ipr:
                held = set(LinuxDataplane(ipr).current().routes)
            if blocks - held:
                missing[node.name] = sorted(blocks - held)
        if not missing:
            return
        if time.monotonic() > deadline:
            lacking = "; ".join(f"{node} lacks {', '.join(cidrs)}"
                                for node, cidrs in sorted(missing.items()))
            raise LabError(f"routes did not converge in {timeout:.0f}s: {lacking}")
        time.sleep(0.1)


def restart_agent(state: LabState, node: str, sig: int = signal.SIGKILL) -> None:
    """Stop a node's agent with `sig` and start it again (its CNI config stays)."""
    pid = state.processes[f"agent-{node}"]
    stop({pid}, sig=sig)
    (state.node_dir(node) / "net.d" / CONFLIST_NAME).unlink(missing_ok=True)
    state.processes[f"agent-{node}"] = _spawn(netns.path(node), _agent_command(state, node),
                                              state.node_dir(node) / "agent.log")
    state.save()
    wait_for_agent(state, node)


def remove_node(state: LabState, node: str, progress: Progress) -> None:
    """Take a node out: its pods, its agent, its Node object (and so its blocks)."""
    check_removable(state, node)
    gone = [p for p, info in state.pods.items() if info["node"] == node]
    progress(f"deleting {len(gone)} pods on {node}")
    store = LocalStore(state.datastore)
    for pod in gone:
        stop({state.processes.pop(f"server-{pod}", None)} - {None})
        if state.runtime == "podman":
            node_podman(state, node)("rm", "-f", "-t", "0", pod)
        else:
            node_runtime(state, node).delete(pod, netns.path(pod))
            netns.remove(pod)
        info = state.pods.pop(pod)
        if "name" in info:
            store.delete("Pod", info["name"], info["namespace"])
    progress(f"stopping the agent on {node} and deleting its Node object")
    stop({state.processes.pop(f"agent-{node}"), state.processes.pop(f"proxy-{node}")})
    store.delete("Node", node)
    store.apply(services.endpoint_slice("echo", state.pods))
    netns.remove(node)
    state.removed_nodes.append(node)
    state.save()


def check_removable(state: LabState, node: str) -> None:
    if node in state.removed_nodes:
        raise LabError(f"{node} was already removed from lab {state.name!r}")
    if node not in {n.name for n in state.plan.nodes}:
        raise LabError(f"lab {state.name!r} has no node {node!r}; its nodes: "
                       f"{', '.join(n.name for n in state.nodes_present)}")


def node_runtime(state: LabState, node: str) -> Runtime:
    """The libcni runtime that makes pods on `node`, as kubelet would there."""
    directory = state.node_dir(node)
    config = json.loads((directory / "net.d" / CONFLIST_NAME).read_text())
    return Runtime(config, [str(state.bin_dir), SYSTEM_CNI_PATH], directory / "cni-cache",
                   prefix=netns.prefix_command(node))


def node_podman(state: LabState, node: str) -> podman.Podman:
    directory = state.node_dir(node)
    return podman.Podman(node, directory / "podman", directory / "net.d",
                         [str(state.bin_dir), SYSTEM_CNI_PATH], state.root / "rootfs", "weft")


def _echo_command(name: str, tcp: list[int], udp: tuple[int, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "weft.lab.echo", "serve", "--name", name,
            *(a for p in tcp for a in ("--tcp", str(p))),
            *(a for p in udp for a in ("--udp", str(p)))]


def _make_pods(state: LabState, plan: topology.LabPlan, progress: Progress) -> None:
    if state.runtime == "podman":
        podman.busybox_rootfs(state.root / "rootfs")
    LocalStore(state.datastore).apply(pods.namespace_object("default"))
    for i, pod in enumerate(plan.pods, 1):
        progress(f"pod {i}/{len(plan.pods)}: {pod.name} on {pod.node}")
        short = pod.name.removeprefix(f"{plan.name}-")
        add_pod(state, pod.name, pod.node, "default", short, {"app": "echo", "pod": short},
                tcp=[services.POD_TCP_PORT], udp=[services.POD_UDP_PORT],
                named={"http": ("TCP", services.POD_TCP_PORT),
                       "dns": ("UDP", services.POD_UDP_PORT)})


def add_pod(state: LabState, pod: str, node: str, namespace: str, name: str,
            labels: dict[str, str], tcp: list[int], udp: list[int],
            named: dict[str, tuple[str, int]] | None = None) -> str:
    """A pod on `node` as kubelet makes one: its Pod object, then the sandbox (netns or
    container) through the CNI, its address in the object, and its echo service on
    `tcp` and `udp` (none without ports). `pod` names its namespace (or container);
    returns its address."""
    store = LocalStore(state.datastore)
    store.apply(pods.pod_object(namespace, name, node, labels, tcp, udp, named))
    if state.runtime == "podman":
        engine = node_podman(state, node)
        engine.run(pod, "sleep", "2147483647")
        address = engine.ip(pod)
        sandbox = engine("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", pod)
    else:
        netns.create(pod)
        result = node_runtime(state, node).add(
            pod, netns.path(pod), args={"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name})
        address = result["ips"][0]["address"].split("/")[0]
        sandbox = netns.path(pod)
    pods.record_address(store, namespace, name, address)
    # The pod's echo service runs in its network namespace (a busybox image has no UDP
    # server); what matters to the network is where it listens.
    if tcp or udp:
        state.processes[f"server-{pod}"] = _spawn(
            sandbox, _echo_command(name, tcp, tuple(udp)), state.root / "servers.log")
    state.pods[pod] = {"node": node, "ip": address, "netns": sandbox,
                       "namespace": namespace, "name": name}
    state.save()
    return address


def _start_proxies(state: LabState, progress: Progress) -> None:
    progress("starting the service proxy on every node")
    for node in state.nodes_present:
        directory = state.node_dir(node.name)
        state.processes[f"proxy-{node.name}"] = _spawn(netns.path(node.netns), [
            sys.executable, "-m", "weft", "proxy", "--node-name", node.name,
            "--datastore", "local", "--datastore-path", str(state.datastore),
            "--health-address", "127.0.0.1:9646", "--min-sync-interval", "0.2"],
            directory / "proxy.log")
    state.save()


def apply_services(state: LabState) -> None:
    """The echo Service and its EndpointSlice over every pod."""
    store = LocalStore(state.datastore)
    store.apply(services.echo_service())
    store.apply(services.endpoint_slice("echo", state.pods))


def wait_for_service(state: LabState, cluster_ip: str, timeout: float = 30) -> None:
    """Until every node's proxy has programmed `cluster_ip`."""
    deadline = time.monotonic() + timeout
    for node in state.nodes_present:
        # In nat when the Service has endpoints, in filter (REJECT) when it has none.
        while cluster_ip not in netns.run(node.netns, ["iptables-save"]).stdout.decode():
            if time.monotonic() > deadline:
                log = state.node_dir(node.name) / "proxy.log"
                raise LabError(f"the proxy on {node.name} did not program {cluster_ip}; "
                               f"see {log}")
            time.sleep(0.1)


def down(name: str, progress: Progress) -> None:
    """Remove every namespace, process and file of lab `name`; idempotent."""
    topology.check_name(name)
    state = load(name)
    if state is not None and state.runtime == "podman":
        for node in state.nodes_present:
            if netns.exists(node.netns) and (state.node_dir(node.name) / "podman").exists():
                progress(f"removing containers on {node.name}")
                node_podman(state, node.name).remove_all()
    teardown.stop_nodes(name, state, progress)
    namespaces = [n for n in netns.listed(name) if topology.owned_by(name, n)]
    victims = processes_in(namespaces)
    if state is not None:
        victims |= {pid for pid in state.processes.values() if alive(pid)}
    # An agent stopping may still respawn a CNI worker it just lost: look again until
    # the namespaces hold no process.
    for _ in range(STOP_ROUNDS):
        if not victims:
            break
        progress(f"stopping {len(victims)} processes")
        stop(victims)
        victims = {pid for pid in processes_in(namespaces) if alive(pid)}
    if namespaces:
        progress(f"removing {len(namespaces)} namespaces")
    for ns in namespaces:
        netns.remove(ns)
    root = lab_root(name)
    if root.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
    teardown.remove_node_state(name, progress)


def _spawn(ns_path: str, command: list[str], log: Path) -> int:
    """A long-running process in the netns at `ns_path`, outliving this command."""
    return spawn(["nsenter", f"--net={ns_path}", *command], log)
