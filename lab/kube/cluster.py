"""`weft lab up --kubernetes`: the lab's topology with real upstream components.

Actions in order, each saying what it does: the network (as `weft lab up`), the
control plane in its own namespace, then per node a root filesystem, containerd with
the images imported and a kubelet; the Nodes register NotReady (no network yet),
CoreDNS is applied, weft is installed with `kubectl apply -f manifests/weft.yaml` as
a user would, and the echo workload goes over every node once the Nodes are Ready.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from weft.lab import build, netns, topology, wiring
from weft.lab.build import LabError
from weft.lab.kube import addons, controlplane, images, layout, node, teardown
from weft.lab.kube.images import archive_names
from weft.lab.kube.layout import KubeLayout
from weft.lab.kube.pki import ClusterPKI
from weft.lab.state import LabState

Progress = Callable[[str], None]
RUNTIME = "kubernetes"
REPO = Path(__file__).resolve().parent.parent.parent
WEFT_MANIFEST = REPO / "manifests" / "weft.yaml"
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
            "kubectl", "containerd", "containerd-shim-runc-v2", "ctr")


def kube_layout(state: LabState) -> KubeLayout:
    bin_dir = Path(state.kube_bin_dir)
    return KubeLayout(state.name, bin_dir, images_dir(bin_dir))


def images_dir(bin_dir: Path) -> Path:
    """The image archives beside the binaries (…/v<version>/images)."""
    return bin_dir.parent / "images"


def check_inputs(bin_dir: Path) -> None:
    missing = [b for b in REQUIRED if not (bin_dir / b).exists()]
    if missing:
        raise LabError(f"{bin_dir} lacks {', '.join(missing)}: build them with "
                       "'weft lab build-kubernetes', or give --kube-bin-dir")
    if not archive_names(images_dir(bin_dir)):
        raise LabError(f"no image archives in {images_dir(bin_dir)}: "
                       "run 'weft lab build-kubernetes'")


def kubectl_prefix(kube: KubeLayout) -> list[str]:
    """kubectl as the lab's admin, from the control plane's namespace (the lab's
    addresses are reachable only inside the lab)."""
    return [*netns.prefix_command(kube.control_plane), str(kube.bin_dir / "kubectl"),
            "--kubeconfig", str(kube.admin_kubeconfig)]


def kubectl(kube: KubeLayout, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([*kubectl_prefix(kube), *args], input=input, capture_output=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise LabError(f"kubectl {' '.join(args[:3])} failed: "
                       f"{result.stderr.decode(errors='replace').strip()[-600:]}")
    return result


def kubectl_json(kube: KubeLayout, *args: str) -> dict:
    return json.loads(kubectl(kube, *args, "-o", "json").stdout)


def apply(kube: KubeLayout, objects: list[dict]) -> None:
    kubectl(kube, "apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": objects}).encode())


def up(name: str, nodes: int, subnets: int, pods_per_node: int, bin_dir: Path,
       progress: Progress, retain: bool = False) -> LabState:
    build.check_can_build(name, subnets, "netns", "CrossSubnet")
    check_inputs(bin_dir)
    if not images.weft_image_current(images_dir(bin_dir)):
        progress("warning: weft's image is older than this source tree; the cluster runs "
                 "the old one ('weft lab build-kubernetes' builds it anew)")
    state = LabState(name, nodes, subnets, pods_per_node, RUNTIME,
                     kube_bin_dir=str(bin_dir.resolve()))
    kube = kube_layout(state)
    plan = state.plan
    state.save()
    try:
        build.build_network(state, plan, progress)
        _start_control_plane(state, kube, plan, progress)
        teardown.save_machine_sysctls()
        _start_nodes(state, kube, plan, progress)
        _install(state, kube, plan, progress)
    except BaseException:
        if retain:
            progress(f"build failed: the lab stays for debugging (logs in {kube.log_dir}); "
                     f"'weft lab down --name {name}' removes it")
        else:
            progress("build failed: removing what was made")
            build.down(name, lambda _msg: None)
        raise
    state.ready = True
    state.save()
    return state


def _start_control_plane(state: LabState, kube: KubeLayout, plan: topology.LabPlan,
                         progress: Progress) -> None:
    cp = kube.control_plane
    address = layout.control_plane_address(plan)
    progress(f"wiring the control plane {cp} ({address}) to switch 0")
    netns.create(cp)
    subnet = plan.subnets[0]
    wiring.wire(cp, "eth0", subnet.switch, "cp", subnet.switch)
    wiring.address(cp, "eth0", f"{address}/24")
    wiring.default_route(cp, subnet.gateway)
    # The API server proxies to pods (kubectl port-forward aside, /proxy/ URLs): on a
    # kubeadm control plane the CNI routes them; here the first node does.
    wiring.route(cp, topology.POD_POOL, plan.nodes[0].address)
    progress("making the cluster's CA and certificates")
    controlplane.make_pki(kube, plan)
    (kube.disk_dir / "etcd").mkdir(parents=True, mode=0o700, exist_ok=True)
    progress("starting etcd and kube-apiserver")
    _spawn_control_plane(state, kube, {
        "etcd": controlplane.etcd_command(kube),
        "kube-apiserver": controlplane.api_server_command(kube, plan)})
    _wait(lambda: kubectl(kube, "get", "--raw", "/readyz", check=False).returncode == 0,
          120, "kube-apiserver did not become ready", kube, "kube-apiserver")
    progress("starting kube-controller-manager and kube-scheduler")
    _spawn_control_plane(state, kube, {
        "kube-controller-manager": controlplane.controller_manager_command(kube),
        "kube-scheduler": controlplane.scheduler_command(kube)})


def _spawn_control_plane(state: LabState, kube: KubeLayout,
                         commands: dict[str, list[str]]) -> None:
    """Start components in the control plane's namespace, each logging to its own file."""
    for component, command in commands.items():
        state.processes[component] = build.spawn(
            [*netns.prefix_command(kube.control_plane), *command],
            controlplane.log(kube, component))
    state.save()


def _start_nodes(state: LabState, kube: KubeLayout, plan: topology.LabPlan,
                 progress: Progress) -> None:
    pki = ClusterPKI(kube.pki_dir)
    for plan_node in plan.nodes:
        progress(f"{plan_node.name}: root filesystem and containerd")
        node.prepare(kube, plan, plan_node, pki)
        holder = build.spawn([*netns.prefix_command(plan_node.netns),
                              *node.root_command(kube, plan_node.name)],
                             kube.log_dir / f"{plan_node.name}-root.log")
        state.processes[f"root-{plan_node.name}"] = holder
        state.save()
        try:
            node.wait_root(holder)
        except TimeoutError as err:
            raise LabError(f"{plan_node.name}: {err}; see "
                           f"{kube.log_dir / f'{plan_node.name}-root.log'}") from err
        state.processes[f"containerd-{plan_node.name}"] = build.spawn(
            [*node.enter(holder), *node.containerd_command(kube)],
            kube.log_dir / f"{plan_node.name}-containerd.log", env=node.environment(kube))
        state.save()
    for plan_node in plan.nodes:
        holder = state.processes[f"root-{plan_node.name}"]
        _wait(lambda h=holder: node.in_root(h, node.CONTAINERD_SOCKET).exists(), 60,
              f"containerd on {plan_node.name} did not start", kube,
              f"{plan_node.name}-containerd")
    archives = archive_names(kube.images_dir)
    progress(f"importing {len(archives)} images into every node's containerd")
    with ThreadPoolExecutor(len(plan.nodes)) as pool:
        list(pool.map(lambda n: _import_images(kube, state.processes[f"root-{n.name}"],
                                               archives), plan.nodes))
    for plan_node in plan.nodes:
        progress(f"{plan_node.name}: starting kubelet")
        start_kubelet(state, kube, plan_node)


def start_kubelet(state: LabState, kube: KubeLayout, plan_node: topology.NodePlan) -> None:
    state.processes[f"kubelet-{plan_node.name}"] = build.spawn(
        [*node.enter(state.processes[f"root-{plan_node.name}"]),
         *node.kubelet_command(kube, plan_node)],
        kube.log_dir / f"{plan_node.name}-kubelet.log", env=node.environment(kube))
    state.save()


def _import_images(kube: KubeLayout, holder: int, archives: list[Path]) -> None:
    ctr = [*node.enter(holder), str(kube.bin_dir / "ctr"), "--address", node.CONTAINERD_SOCKET,
           "--namespace", "k8s.io"]
    for archive in archives:
        out = subprocess.run([*ctr, "images", "import", "--local", str(archive)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise LabError(f"importing {archive.name} failed: {out.stderr.strip()[-400:]}")
    # Pinned images are never garbage collected by kubelet (kind pins its own too).
    refs = subprocess.run([*ctr, "images", "list", "--quiet"], capture_output=True,
                          text=True, check=True).stdout.split()
    for ref in refs:
        subprocess.run([*ctr, "images", "label", ref, "io.cri-containerd.pinned=pinned"],
                       capture_output=True, check=True)


def _install(state: LabState, kube: KubeLayout, plan: topology.LabPlan,
             progress: Progress) -> None:
    names = [n.name for n in plan.nodes]
    progress(f"waiting for {len(names)} Nodes to register")
    _wait(lambda: set(names) <= {n["metadata"]["name"] for n in
                                 kubectl_json(kube, "get", "nodes")["items"]},
          120, "not every kubelet registered its Node", kube, f"{names[0]}-kubelet")
    state.observed["ready_before_weft"] = sorted(
        n for n, ready in node_readiness(kube).items() if ready)
    state.save()
    progress("applying CoreDNS (10.96.0.10)")
    apply(kube, addons.coredns())
    progress(f"installing weft: kubectl apply -f {WEFT_MANIFEST.relative_to(REPO)}")
    kubectl(kube, "apply", "-f", str(WEFT_MANIFEST))
    progress("waiting for the weft-node and weft-proxy DaemonSets on every node")
    for ds in ("weft-node", "weft-proxy"):
        kubectl(kube, "-n", "kube-system", "rollout", "status", f"ds/{ds}", "--timeout=300s",
                timeout=320)
    progress("waiting for every Node to be Ready")
    kubectl(kube, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=180s",
            timeout=200)
    kubectl(kube, "-n", "kube-system", "rollout", "status", "deploy/coredns",
            "--timeout=180s", timeout=200)
    replicas = len(names) * state.pods_per_node
    progress(f"deploying the echo workload: {replicas} agnhost netexec pods over "
             f"{len(names)} nodes")
    apply(kube, addons.workload(replicas))
    kubectl(kube, "-n", addons.WORKLOAD_NAMESPACE, "rollout", "status", "deploy/echo",
            "--timeout=300s", timeout=320)
    record_pods(state, kube)


def record_pods(state: LabState, kube: KubeLayout) -> None:
    """The workload's pods as the lab's pods: name, node and address."""
    pods = kubectl_json(kube, "-n", addons.WORKLOAD_NAMESPACE, "get", "pods",
                        "-l", "app=echo")["items"]
    state.pods = {p["metadata"]["name"]: {"node": p["spec"].get("nodeName", ""),
                                          "ip": p["status"].get("podIP", ""), "netns": ""}
                  for p in pods if p["metadata"].get("deletionTimestamp") is None}
    state.save()


def node_readiness(kube: KubeLayout) -> dict[str, bool]:
    nodes = kubectl_json(kube, "get", "nodes")["items"]
    return {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                       for c in n["status"].get("conditions", []))
            for n in nodes}


def _wait(condition: Callable[[], bool], timeout: float, failure: str, kube: KubeLayout,
          log: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(f"{failure} in {timeout:.0f}s; see {kube.log_dir / log}.log")
        time.sleep(0.5)


def remove_node(state: LabState, name: str, progress: Progress) -> None:
    """Take a node out as an operator would: its kubelet and containerd stop, its Node
    is deleted (the garbage collector then deletes its IPAMBlocks), its namespace goes."""
    build.check_removable(state, name)
    kube = kube_layout(state)
    progress(f"stopping kubelet, pods and containerd on {name}")
    teardown.stop_node(state, name)
    progress(f"deleting Node {name}")
    kubectl(kube, "delete", "node", name, "--wait=true")
    netns.remove(name)
    node.remove_cgroup_root(layout.node_cgroup(name))
    state.removed_nodes.append(name)
    record_pods(state, kube)
