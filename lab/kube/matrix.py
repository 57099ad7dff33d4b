"""`weft lab test` on a Kubernetes lab: the connectivity matrix through real pods.

Each echo pod runs one script through `kubectl exec` (the API server, kubelet's
streaming, containerd): HTTP to every other pod's netexec, whose /clientip must show
the pod's own address (no NAT between pods); ICMP to every pod and node; the echo
Service by its DNS name over TCP and UDP (CoreDNS, then weft-proxy); and the lab's
internet, which must see the pod's node address (NAT outgoing). The internet asks
the NodePort of every node.
"""

from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor

from weft.lab import netns, topology
from weft.lab.build import INTERNET_PORT
from weft.lab.kube import addons, cluster
from weft.lab.kube.layout import KubeLayout
from weft.lab.matrix import INTERNET, SVC_TCP, SVC_UDP, Check
from weft.lab.state import LabState

SERVICE = f"echo.{addons.WORKLOAD_NAMESPACE}.svc.cluster.local"


def probe_script(pods: dict[str, str], nodes: dict[str, str]) -> str:
    """A bash script printing one line per probe: KIND TARGET ANSWER..."""
    lines = []
    for name, ip in pods.items():
        lines.append(f"echo tcp {name} $(curl -s -m 3 http://{ip}:{addons.HTTP_PORT}/clientip)")
        lines.append(f"ping -c 1 -W 2 {ip} >/dev/null 2>&1 && echo icmp {name} ok "
                     f"|| echo icmp {name} no reply")
    for name, ip in nodes.items():
        lines.append(f"ping -c 1 -W 2 {ip} >/dev/null 2>&1 && echo icmp {name} ok "
                     f"|| echo icmp {name} no reply")
    lines.append(f"echo {SVC_TCP} $(curl -s -m 3 http://{SERVICE}:"
                 f"{addons.SERVICE_HTTP_PORT}/hostname)")
    lines.append(f"echo {SVC_UDP} $(echo hostname | nc -u -w 2 {SERVICE} "
                 f"{addons.SERVICE_UDP_PORT})")
    lines.append(f"echo {INTERNET} $(nc -w 3 {topology.INTERNET_ADDRESS} {INTERNET_PORT} "
                 "</dev/null)")
    return "\n".join(lines) + "\n"


LEGEND = (f"{SVC_TCP}/{SVC_UDP}: the echo Service by its name, {SERVICE} (TCP "
          f"{addons.SERVICE_HTTP_PORT}, UDP {addons.SERVICE_UDP_PORT}); internet -> node: "
          f"NodePort {addons.NODE_PORT}")


def run(state: LabState, workers: int = 8) -> list[Check]:
    kube = cluster.kube_layout(state)
    cluster.record_pods(state, kube)
    nodes = {n.name: n.address for n in state.nodes_present}
    jobs = [lambda s=source: _from_pod(state, kube, s, nodes) for source in state.pods]
    jobs += [lambda n=name, ip=ip: [_node_port(state, n, ip)] for name, ip in nodes.items()]
    with ThreadPoolExecutor(workers) as pool:
        return [check for checks in pool.map(lambda job: job(), jobs) for check in checks]


def _from_pod(state: LabState, kube: KubeLayout, source: str, nodes: dict[str, str]) -> list[Check]:
    others = {name: info["ip"] for name, info in state.pods.items() if name != source}
    script = probe_script(others, nodes)
    result = cluster.kubectl(kube, "-n", addons.WORKLOAD_NAMESPACE, "exec", source, "--",
                             "bash", "-c", script, check=False, timeout=120)
    answers: dict[tuple[str, str], str] = {}
    for line in result.stdout.decode(errors="replace").splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("tcp", "icmp"):
            target, _, answer = rest.partition(" ")
            answers[(kind, target)] = answer
        else:
            answers[(kind, "")] = rest
    if result.returncode != 0 and not answers:
        error = result.stderr.decode(errors="replace").strip()[-200:]
        return [Check(source, "-", "exec", False, f"kubectl exec failed: {error}")]
    own_ip = state.pods[source]["ip"]
    node_ip = nodes.get(state.pods[source]["node"], "")
    pod_names = set(state.pods)
    checks = []
    for target, ip in others.items():
        seen = answers.get(("tcp", target), "").rsplit(":", 1)[0]
        checks.append(Check(source, target, "tcp", seen == own_ip, "" if seen == own_ip else
                            f"{ip}:{addons.HTTP_PORT} saw {seen or 'nothing'}, not {own_ip}"))
    for target in [*others, *nodes]:
        answer = answers.get(("icmp", target), "")
        checks.append(Check(source, target, "icmp", answer == "ok",
                            "" if answer == "ok" else "no echo reply"))
    for kind, protocol in ((SVC_TCP, "tcp"), (SVC_UDP, "udp")):
        answer = answers.get((kind, ""), "")
        ok = answer in pod_names
        checks.append(Check(source, kind, protocol, ok, "" if ok else
                            f"{SERVICE} over {protocol} answered {answer or 'nothing'}"))
    answer = answers.get((INTERNET, ""), "")
    seen = answer.split(" ")[-1] if answer.startswith("internet ") else ""
    checks.append(Check(source, INTERNET, "nat", seen == node_ip, "" if seen == node_ip else
                        f"arrived from {seen or 'nowhere'}, not from its node {node_ip}"))
    return checks


def _node_port(state: LabState, node: str, address: str) -> Check:
    url = f"http://{address}:{addons.NODE_PORT}/hostname"
    result = subprocess.run([*netns.prefix_command(state.plan.internet), "curl", "-s",
                             "-m", "3", url], capture_output=True, timeout=20)
    answer = result.stdout.decode(errors="replace").strip()
    ok = answer in state.pods
    return Check(INTERNET, node, "nodeport", ok, "" if ok else
                 f"{url} answered {shlex.quote(answer) if answer else 'nothing'}")
