"""What the Kubernetes lab runs on its cluster besides weft: CoreDNS and the echo workload.

CoreDNS is kubeadm's deployment of it (Service kube-dns at 10.96.0.10, its RBAC) with
no `forward`: the lab has no upstream resolver, and forwarding to one that does not
answer makes the loop plugin's probe fail. The workload is agnhost netexec, the
server upstream's own network tests talk to, spread over every node.
"""

from __future__ import annotations

from weft.lab.kube import components, layout

WORKLOAD_NAMESPACE = "weft-lab"
WORKLOAD_LABELS = {"app": "echo"}
HTTP_PORT, UDP_PORT = 8080, 8081
SERVICE_HTTP_PORT, SERVICE_UDP_PORT, NODE_PORT = 80, 81, 30080

COREFILE = f""".:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {layout.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    cache 30
    reload
    loadbalance
}}
"""


def coredns() -> list[dict]:
    labels = {"k8s-app": "kube-dns"}
    meta = {"namespace": "kube-system", "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods",
                                                     "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns",
                       "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": "kube-system"},
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", **meta},
         "spec": {
             "replicas": 2, "selector": {"matchLabels": labels},
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
             "template": {"metadata": {"labels": labels}, "spec": {
                 "serviceAccountName": "coredns", "priorityClassName": "system-cluster-critical",
                 "dnsPolicy": "Default",
                 "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                 "affinity": {"podAntiAffinity": {
                     "preferredDuringSchedulingIgnoredDuringExecution": [
                         {"weight": 100, "podAffinityTerm": {
                             "topologyKey": "kubernetes.io/hostname",
                             "labelSelector": {"matchLabels": labels}}}]}},
                 "containers": [{
                     "name": "coredns", "image": components.COREDNS_IMAGE,
                     "imagePullPolicy": "IfNotPresent",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns",
                                       "readOnly": True}],
                     "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                               {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
                     "securityContext": {"allowPrivilegeEscalation": False,
                                         "capabilities": {"add": ["NET_BIND_SERVICE"],
                                                          "drop": ["ALL"]},
                                         "readOnlyRootFilesystem": True},
                     "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                       "initialDelaySeconds": 10, "timeoutSeconds": 5},
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"},
                                   "limits": {"memory": "170Mi"}}}],
                 "volumes": [{"name": "config", "configMap": {
                     "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}],
             }}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", **meta,
                      "labels": {**labels, "kubernetes.io/name": "CoreDNS"}},
         "spec": {"selector": labels, "clusterIP": layout.DNS_SERVICE_IP, "ports": [
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
             {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}},
    ]


def workload(replicas: int) -> list[dict]:
    """agnhost netexec pods spread evenly over the nodes, a ClusterIP Service and a
    NodePort Service in front of them."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WORKLOAD_NAMESPACE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "echo", "namespace": WORKLOAD_NAMESPACE},
         "spec": {"replicas": replicas, "selector": {"matchLabels": WORKLOAD_LABELS},
                  "template": {"metadata": {"labels": WORKLOAD_LABELS}, "spec": {
                      "topologySpreadConstraints": [{
                          "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                          "whenUnsatisfiable": "DoNotSchedule",
                          "labelSelector": {"matchLabels": WORKLOAD_LABELS}}],
                      "terminationGracePeriodSeconds": 1,
                      "containers": [{
                          "name": "netexec", "image": components.AGNHOST_IMAGE,
                          "imagePullPolicy": "IfNotPresent",
                          "args": ["netexec", f"--http-port={HTTP_PORT}",
                                   f"--udp-port={UDP_PORT}"],
                          "ports": [{"name": "http", "containerPort": HTTP_PORT},
                                    {"name": "udp", "containerPort": UDP_PORT,
                                     "protocol": "UDP"}],
                          "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                             "periodSeconds": 2}}]}}}},
        _service("echo", "ClusterIP"),
        _service("echo-nodeport", "NodePort"),
    ]


def _service(name: str, kind: str) -> dict:
    http = {"name": "http", "port": SERVICE_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}
    if kind == "NodePort":
        http["nodePort"] = NODE_PORT
    ports = [http]
    if kind == "ClusterIP":
        ports.append({"name": "udp", "port": SERVICE_UDP_PORT, "targetPort": "udp",
                      "protocol": "UDP"})
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": WORKLOAD_NAMESPACE},
            "spec": {"type": kind, "selector": WORKLOAD_LABELS, "ports": ports}}
