"""weft on a real cluster: upstream kube-apiserver, controllers, containerd and kubelets.

One Kubernetes lab (3 nodes over 2 subnets) serves every test here; it is built the way
users install weft, with `kubectl apply -f manifests/weft.yaml`, and taken down after
the last test, also when one fails. Everything is in this one module, in one xdist
worker (`--dist loadgroup`), so no two clusters ever run at once on a 2-core machine.
In file order: a failed `up` (before the lab exists), what a user checks, upstream's
own network tests (e2e.test) as the judge, then what changes the cluster (deleting
pods, restarting an agent, deleting and removing nodes).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import netaddr
import pytest

from weft.lab import netns, processes
from weft.lab.kube import addons, cluster, components, e2e, layout, teardown
from weft.lab.kube import matrix as kube_matrix
from weft.lab.state import LabState, load

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration,
              pytest.mark.xdist_group("kubernetes")]

POD_POOL = netaddr.IPNetwork("10.244.0.0/16")
# [sig-network] specs tagged [Conformance] in Kubernetes 1.37.2
# (test/conformance/testdata/conformance.yaml).
CONFORMANCE_SPECS = 47
# Netpol specs in Kubernetes 1.37.2 (test/e2e/network/netpol): 48 over TCP and UDP, and 3
# [Feature:SCTPConnectivity] ones that need SCTP sockets in the kernel.
NETPOL_SPECS, NETPOL_SCTP_SPECS = 48, 3
VETH = re.compile(r"weft[0-9a-f]{11}")


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if not (layout.default_bin_dir() / "kubelet").exists():
        pytest.skip("the Kubernetes build is missing: run 'weft lab build-kubernetes'")
    name = f"k{uuid.uuid4().hex[:6]}"
    up = subprocess.run([sys.executable, "-m", "weft", "lab", "up", "--kubernetes",
                         "--name", name], capture_output=True, text=True, timeout=1200)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        state = load(name)
        assert state is not None
        yield state
    finally:
        down = subprocess.run([sys.executable, "-m", "weft", "lab", "down", "--name", name],
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert_nothing_left(name)


def assert_nothing_left(name: str) -> None:
    """What `down` must remove: namespaces, processes, cgroups, mounts, files."""
    assert [n for n in netns.listed(name)] == []
    assert not (layout.DISK_ROOT / name).exists()
    assert teardown.node_cgroups(name) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/weft-lab/{name}" not in mounts
    procs = subprocess.run(["pgrep", "-af", f"weft-lab/{name}|--name {name}"],
                           capture_output=True, text=True).stdout
    assert [line for line in procs.splitlines() if "pytest" not in line] == []


def kubectl(state: LabState, *args: str, check: bool = True) -> str:
    return cluster.kubectl(cluster.kube_layout(state), *args,
                           check=check).stdout.decode()


def kubectl_json(state: LabState, *args: str) -> dict:
    return json.loads(kubectl(state, *args, "-o", "json"))


def wait_for(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s")
        time.sleep(interval)


def node_holder(state: LabState, node: str) -> int:
    return state.processes[f"root-{node}"]


def host_veths(node: str) -> list[str]:
    with netns.iproute(node) as ipr:
        return sorted(n for n in (link.get("ifname") for link in ipr.get_links())
                      if n and VETH.fullmatch(n))


def pod_routes(node: str) -> set[str]:
    """The /32 routes to local pods the plugin added."""
    with netns.iproute(node) as ipr:
        return {r.get("dst") for r in ipr.get_routes(family=2, table=254)
                if r["dst_len"] == 32 and r.get("dst") in POD_POOL}


def allocations(state: LabState, node: str) -> set[str]:
    """Pod addresses weft-ipam holds on the node (its tunnel address is no pod's)."""
    blocks = Path(f"/proc/{node_holder(state, node)}/root/var/lib/weft/ipam/blocks")
    found = set()
    for path in blocks.glob("*.json"):
        found |= {a["address"] for a in json.loads(path.read_text())["allocations"]
                  if a["container_id"]}
    return found


def pods_on(state: LabState, node: str) -> set[str]:
    """Addresses of the pod-network pods the API server has on a node."""
    items = kubectl_json(state, "get", "pods", "-A", "--field-selector",
                         f"spec.nodeName={node}")["items"]
    return {p["status"]["podIP"] for p in items
            if not p["spec"].get("hostNetwork") and p["status"].get("podIP")}


def assert_node_clean(state: LabState, node: str) -> None:
    """A veth, a /32 route and an allocation for exactly the pods that exist."""
    def settled():
        live = pods_on(state, node)
        return live if (len(host_veths(node)) == len(live) and pod_routes(node) == live
                        and allocations(state, node) == live) else None
    wait_for(settled, 60, f"{node} holding exactly its live pods' veths, routes and "
             f"addresses (veths {len(host_veths(node))}, routes {sorted(pod_routes(node))}, "
             f"allocations {sorted(allocations(state, node))}, pods "
             f"{sorted(pods_on(state, node))})")


def test_a_failed_up_removes_everything_it_made(tmp_path):
    real = layout.default_bin_dir()
    if not (real / "kubelet").exists():
        pytest.skip("the Kubernetes build is missing: run 'weft lab build-kubernetes'")
    # The user's own directory of binaries, with its images beside it: one archive is
    # broken, so up fails after the control plane and containerd already run.
    bin_dir, images = tmp_path / "kube" / "bin", tmp_path / "kube" / "images"
    bin_dir.mkdir(parents=True)
    images.mkdir()
    for binary in real.iterdir():
        (bin_dir / binary.name).symlink_to(binary.resolve())
    for archive in (real.parent / "images").glob("*.tar"):
        (images / archive.name).symlink_to(archive.resolve())
    (images / "zz-broken.tar").write_bytes(b"not an image archive")
    name = f"f{uuid.uuid4().hex[:6]}"

    up = subprocess.run([sys.executable, "-m", "weft", "lab", "up", "--kubernetes", "--name",
                         name, "--nodes", "2", "--kube-bin-dir", str(bin_dir)],
                        capture_output=True, text=True, timeout=600)

    assert up.returncode == 1, up.stdout + up.stderr
    assert f"binaries from {bin_dir}" in up.stdout
    assert "starting etcd and kube-apiserver" in up.stdout  # it got that far
    assert "importing zz-broken.tar failed" in up.stderr and "Traceback" not in up.stderr
    assert "build failed: removing what was made" in up.stdout
    assert_nothing_left(name)


def test_nodes_were_not_ready_until_weft_ran_and_are_ready_now(lab):
    assert lab.observed["ready_before_weft"] == [], \
        "a Node was Ready before weft ran: the runtime saw a network config too early"
    nodes = kubectl_json(lab, "get", "nodes")["items"]
    assert len(nodes) == 3
    for item in nodes:
        ready = {c["type"]: c["status"] for c in item["status"]["conditions"]}["Ready"]
        assert ready == "True", item["metadata"]["name"]


def test_each_agent_takes_the_node_ip_kubelet_registered(lab):
    for item in kubectl_json(lab, "get", "nodes")["items"]:
        internal = next(a["address"] for a in item["status"]["addresses"]
                        if a["type"] == "InternalIP")
        assert item["metadata"]["annotations"]["weft.dev/node-ip"] == internal


def test_both_daemonsets_run_on_every_node_and_coredns_runs(lab):
    for ds in ("weft-node", "weft-proxy"):
        status = kubectl_json(lab, "-n", "kube-system", "get", "ds", ds)["status"]
        assert status["desiredNumberScheduled"] == 3
        assert status["numberReady"] == 3, status
    coredns = kubectl_json(lab, "-n", "kube-system", "get", "pods", "-l",
                           "k8s-app=kube-dns")["items"]
    assert coredns and all(p["status"]["phase"] == "Running" for p in coredns)


def test_no_weft_container_logs_a_403_or_a_traceback(lab):
    pods = kubectl_json(lab, "-n", "kube-system", "get", "pods", "-l",
                        "app.kubernetes.io/part-of=weft")["items"]
    assert len(pods) == 6
    for pod in pods:
        spec = pod["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            log = kubectl(lab, "-n", "kube-system", "logs", pod["metadata"]["name"],
                          "-c", container["name"])
            where = f"{pod['metadata']['name']}/{container['name']}"
            assert "Traceback" not in log, f"{where}:\n{log[-2000:]}"
            assert not re.search(r"\b403\b|Forbidden", log), f"{where}:\n{log[-2000:]}"


def test_every_pod_reaches_every_pod_node_service_nodeport_and_the_internet(lab):
    checks = kube_matrix.run(lab)
    assert {info["node"] for info in lab.pods.values()} == {n.name for n in lab.plan.nodes}
    assert all(netaddr.IPAddress(info["ip"]) in POD_POOL for info in lab.pods.values())
    failed = [c for c in checks if not c.passed]
    assert failed == [], "\n".join(f"{c.source} -> {c.target} {c.kind}: {c.detail}"
                                   for c in failed)
    kinds = {c.kind for c in checks}
    assert kinds == {"tcp", "icmp", "udp", "nat", "nodeport"}


def run_e2e(lab: LabState, *flags: str) -> list[tuple[str, str, float]]:
    proc = subprocess.run([sys.executable, "-m", "weft", "lab", "e2e", "--name", lab.name,
                           "--procs", "4", *flags], capture_output=True, text=True,
                          timeout=3600)
    junit = next(line.rsplit("JUnit: ", 1)[1].strip() for line in proc.stdout.splitlines()
                 if "JUnit: " in line)
    specs = [s for s in e2e.results(Path(junit)) if s[1] != "skipped"]
    failed = [name for name, result, _ in specs if result == "failed"]
    assert proc.returncode == 0 and failed == [], (failed, proc.stdout[-4000:])
    assert "SUCCESS!" in proc.stdout
    return specs


def test_status_and_exec_work_on_a_kubernetes_lab(lab):
    status = subprocess.run([sys.executable, "-m", "weft", "lab", "status", "--name", lab.name],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"lab {lab.name}: Kubernetes, 3 nodes, 3 Ready, ready")
    for title in ("NODES", "WEFT PODS", "BLOCKS", "PODS", "ROUTES", "PROCESSES"):
        assert f"\n{title}" in status.stdout
    cluster.record_pods(lab, cluster.kube_layout(lab))
    pod = sorted(lab.pods)[0]
    run = subprocess.run([sys.executable, "-m", "weft", "lab", "exec", "--name", lab.name, pod,
                          "--", "hostname"], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout.strip()) == (0, pod), run.stderr


def test_every_sig_network_conformance_spec_passes(lab):
    specs = run_e2e(lab)
    assert len(specs) == CONFORMANCE_SPECS, [name for name, _, _ in specs]


def test_granular_service_checks_pass(lab):
    specs = run_e2e(lab, "--focus", r"\[sig-network\] Networking Granular Checks: Services",
                    "--skip", r"\[Slow\]|\[Disruptive\]|\[Feature:")
    # pod, node and endpoint to Service over http and udp, endpoint updates, ...
    assert len(specs) >= 14, [name for name, _, _ in specs]


def kernel_has_sctp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:  # EPROTONOSUPPORT: a kernel built without SCTP
        return False
    return True


def test_every_netpol_spec_passes(lab):
    # The SCTP specs run wherever the kernel can open SCTP sockets.
    sctp = kernel_has_sctp()
    specs = run_e2e(lab, "--focus", "Netpol",
                    *(() if sctp else ("--skip", "Feature:SCTPConnectivity")))
    expected = NETPOL_SPECS + (NETPOL_SCTP_SPECS if sctp else 0)
    assert len(specs) == expected, [name for name, _, _ in specs]


def test_deleting_a_pod_through_the_api_leaves_nothing_on_its_node(lab):
    pod, info = sorted(lab.pods.items())[0]
    kubectl(lab, "-n", addons.WORKLOAD_NAMESPACE, "delete", "pod", pod, "--wait=true")
    assert info["ip"] not in pods_on(lab, info["node"])
    assert_node_clean(lab, info["node"])


def test_a_burst_of_30_pods_created_and_deleted_leaves_nothing(lab):
    name = "burst"
    cluster.apply(cluster.kube_layout(lab), [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": addons.WORKLOAD_NAMESPACE},
         "spec": {"replicas": 30, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": {
                      "terminationGracePeriodSeconds": 0,
                      "containers": [{"name": "pause", "image": components.AGNHOST_IMAGE,
                                      "args": ["pause"]}]}}}}])
    kubectl(lab, "-n", addons.WORKLOAD_NAMESPACE, "rollout", "status", f"deploy/{name}",
            "--timeout=300s")
    ips = {p["status"]["podIP"] for p in kubectl_json(
        lab, "-n", addons.WORKLOAD_NAMESPACE, "get", "pods", "-l", f"app={name}")["items"]}
    assert len(ips) == 30 and all(netaddr.IPAddress(ip) in POD_POOL for ip in ips)
    kubectl(lab, "-n", addons.WORKLOAD_NAMESPACE, "delete", "deploy", name, "--wait=true")
    wait_for(lambda: not kubectl_json(lab, "-n", addons.WORKLOAD_NAMESPACE, "get", "pods",
                                      "-l", f"app={name}")["items"], 120,
             "the burst's pods gone")
    for plan_node in lab.plan.nodes:
        assert_node_clean(lab, plan_node.name)


def test_restarting_the_agent_keeps_every_pod_connected(lab):
    node = lab.plan.nodes[2].name  # across subnets from the others: VXLAN
    old = kubectl_json(lab, "-n", "kube-system", "get", "pods", "-l",
                       "app.kubernetes.io/name=weft-node", "--field-selector",
                       f"spec.nodeName={node}")["items"][0]["metadata"]["name"]
    cluster.record_pods(lab, cluster.kube_layout(lab))
    source = next(p for p, i in lab.pods.items() if i["node"] != node)
    target = next(i["ip"] for i in lab.pods.values() if i["node"] == node)
    # 150 requests, 0.1 s apart, from a pod elsewhere to a pod on that node, while its
    # weft-node pod is deleted and the DaemonSet starts another. Each may take 3 s: on a
    # machine at load 40, a request can stall for a second without any packet lost.
    probe = subprocess.Popen([*cluster.kubectl_prefix(cluster.kube_layout(lab)), "-n",
                              addons.WORKLOAD_NAMESPACE, "exec", source, "--", "bash", "-c",
                              f"for i in $(seq 150); do curl -s -m 3 -o /dev/null -w "
                              f"'%{{http_code}}\\n' http://{target}:{addons.HTTP_PORT}/hostname;"
                              f" sleep 0.1; done"], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    kubectl(lab, "-n", "kube-system", "delete", "pod", old, "--wait=false")
    out, _ = probe.communicate(timeout=300)
    kubectl(lab, "-n", "kube-system", "rollout", "status", "ds/weft-node", "--timeout=180s")
    codes = out.split()
    assert len(codes) == 150 and set(codes) == {"200"}, \
        f"{codes.count('200')} of {len(codes)} requests answered during the restart"
    assert kube_matrix.run(lab) and all(c.passed for c in kube_matrix.run(lab))


def test_a_node_deleted_and_registered_again_claims_its_blocks_again(lab):
    """The garbage collector deletes a deleted Node's IPAMBlocks; when its kubelet
    registers it again, its agent (which still allocates from them) claims them back,
    owned by the new Node, before another node can take them."""
    plan_node = lab.plan.nodes[1]
    def blocks_of(node: str) -> dict[str, list[str]]:
        return {b["spec"]["cidr"]: [o["uid"] for o in b["metadata"].get("ownerReferences", [])]
                for b in kubectl_json(lab, "get", "ipamblocks")["items"]
                if b["spec"]["node"] == node}
    before = blocks_of(plan_node.name)
    old_uid = kubectl_json(lab, "get", "node", plan_node.name)["metadata"]["uid"]
    processes.stop({lab.processes[f"kubelet-{plan_node.name}"]})
    kubectl(lab, "delete", "node", plan_node.name, "--wait=true")
    wait_for(lambda: not blocks_of(plan_node.name), 60, "the GC deleting the blocks")
    cluster.start_kubelet(lab, cluster.kube_layout(lab), plan_node)
    new_uid = wait_for(lambda: kubectl_json(lab, "get", "nodes")["items"] and next(
        (n["metadata"]["uid"] for n in kubectl_json(lab, "get", "nodes")["items"]
         if n["metadata"]["name"] == plan_node.name), None), 60, "the Node registered again")
    assert new_uid != old_uid
    wait_for(lambda: blocks_of(plan_node.name) == {c: [new_uid] for c in before}, 120,
             f"{plan_node.name} claiming {sorted(before)} again, owned by the new Node")
    kubectl(lab, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=180s")
    kubectl(lab, "-n", "kube-system", "rollout", "status", "ds/weft-node", "--timeout=180s")
    kubectl(lab, "-n", addons.WORKLOAD_NAMESPACE, "rollout", "status", "deploy/echo",
            "--timeout=180s")
    failed = [c for c in kube_matrix.run(lab) if not c.passed]
    assert failed == [], "\n".join(f"{c.source} -> {c.target} {c.kind}: {c.detail}"
                                   for c in failed)


def test_a_deleted_nodes_blocks_are_removed_by_the_garbage_collector(lab):
    node = lab.plan.nodes[2].name
    blocks = [b["metadata"]["name"] for b in kubectl_json(lab, "get", "ipamblocks")["items"]
              if b["spec"]["node"] == node]
    assert blocks
    remove = subprocess.run([sys.executable, "-m", "weft", "lab", "remove-node", "--name",
                             lab.name, node], capture_output=True, text=True, timeout=300)
    assert remove.returncode == 0, remove.stdout + remove.stderr
    wait_for(lambda: not any(b["spec"]["node"] == node for b in kubectl_json(
        lab, "get", "ipamblocks")["items"]), 120, f"{node}'s IPAMBlocks deleted by the GC")
