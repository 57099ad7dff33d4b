"""The lab's Services: an `echo` Service in front of every pod, as plain Kubernetes YAML.

TCP 80 -> the pods' named port `http` (8080), UDP 53 -> `dns` (53); TCP is also
a NodePort (30080) on every node. There is no endpoints controller in the lab,
so the lab writes the EndpointSlice itself, as the controller would.
"""

from __future__ import annotations

from collections.abc import Mapping

CLUSTER_IP = "10.96.0.10"
SERVICE_CIDR = "10.96.0.0/16"
TCP_PORT, UDP_PORT, NODE_PORT = 80, 53, 30080
POD_TCP_PORT, POD_UDP_PORT = 8080, 53


def echo_service() -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": CLUSTER_IP, "selector": {"app": "echo"},
                     "ports": [
                         {"name": "http", "protocol": "TCP", "port": TCP_PORT,
                          "targetPort": "http", "nodePort": NODE_PORT},
                         {"name": "dns", "protocol": "UDP", "port": UDP_PORT,
                          "targetPort": "dns"}]}}


def endpoint_slice(service: str, pods: Mapping[str, Mapping[str, str]],
                   ports: list[dict] | None = None) -> dict:
    """An EndpointSlice naming `pods` ({name: {ip, node}}) as ready endpoints."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-lab", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": ports or [{"name": "http", "protocol": "TCP", "port": POD_TCP_PORT},
                               {"name": "dns", "protocol": "UDP", "port": POD_UDP_PORT}],
            "endpoints": [{"addresses": [info["ip"]], "conditions": {"ready": True},
                           "nodeName": info["node"],
                           "targetRef": {"kind": "Pod", "name": name}}
                          for name, info in sorted(pods.items())]}
