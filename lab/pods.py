"""The lab's pods as Kubernetes sees them: Namespace and Pod objects in the datastore.

As in a cluster, a pod's object (its namespace, labels, node and named ports) exists
before its sandbox: the CNI ADD finds it, so NetworkPolicy selects the pod from its
first packet. Its address goes into status.podIP after ADD, as kubelet writes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from weft.ipam.datastore import Datastore


def namespace_object(name: str, labels: Mapping[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name,
                                                  **(labels or {})}}}


def port_name(port: int, protocol: str) -> str:
    """The name a port is served under: serve-80-tcp, as upstream's netpol suite names it."""
    return f"serve-{port}-{protocol.lower()}"


def pod_object(namespace: str, name: str, node: str, labels: Mapping[str, str],
               tcp: list[int], udp: list[int], named: Mapping[str, tuple[str, int]] | None = None,
               ) -> dict:
    """A Pod with one container declaring its ports; `named` adds names of its own
    ({name: (protocol, port)}) beside the serve-<port>-<protocol> ones."""
    ports = [{"name": port_name(p, proto), "containerPort": p, "protocol": proto}
             for proto, numbers in (("TCP", tcp), ("UDP", udp)) for p in numbers]
    ports += [{"name": n, "containerPort": p, "protocol": proto}
              for n, (proto, p) in (named or {}).items()]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"nodeName": node, "containers": [{"name": "echo", "ports": ports}]},
            "status": {"phase": "Pending"}}


def record_address(store: Datastore, namespace: str, name: str, address: str) -> None:
    """What kubelet does once the sandbox has its network."""
    store.set_status("Pod", name, {"phase": "Running", "podIP": address,
                                   "podIPs": [{"ip": address}]}, namespace)
