"""The Kubernetes manifests: valid objects, CRDs that accept what weft writes, and
settings that agree with weft's own code and with the kind cluster config."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from weft import cli
from weft.agent.config import AgentConfig
from weft.agent.node import NodeAgent
from weft.cni.config import DEFAULT_KUBECONFIG, DEFAULT_SOCKET, DEFAULT_STATE_DIR
from weft.ipam.allocator import IPAM, TUNNEL_HANDLE
from weft.ipam.datastore import GROUP, KINDS
from weft.ipam.local import LocalStore
from weft.ipam.pools import DEFAULT_POOL, VXLAN_MODES, parse_pool

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
WEFT_YAML = MANIFESTS / "weft.yaml"
KIND_YAML = MANIFESTS / "kind.yaml"
EXAMPLES = sorted((MANIFESTS / "examples").glob("*.yaml"))

NAMESPACE = "kube-system"
IMAGE = "weft:dev"
# DESIGN, "Kubernetes manifests": the hostPath mounts of weft-node ...
DESIGN_HOST_PATHS = {"/opt/cni/bin", "/etc/cni/net.d", "/opt/weft", "/var/lib/weft", "/run/weft"}
# ... and what the agent needs besides: pods' namespaces, kernel modules, the iptables lock.
NODE_HOST_PATHS = DESIGN_HOST_PATHS | {"/run/netns", "/lib/modules", "/run/xtables.lock"}

# The service accounts; what they may do is derived from the code's own API calls in
# tests/integration/test_kubernetes_cluster.py, not written down here.
ACCOUNTS = ("weft-node", "weft-proxy")


def _versions() -> list[str]:
    """The newest Kubernetes 1.3x kubernetes-validate knows (kind's current node images
    are 1.3x), and 1.30, the oldest these manifests are for."""
    known = {tuple(int(p) for p in v.split(".")[:2])
             for v in kubernetes_validate.utils.all_versions()}
    newest = max((v for v in known if v[0] == 1 and 30 <= v[1] < 40), default=None)
    assert newest is not None, f"kubernetes-validate knows no 1.3x: {sorted(known)}"
    return sorted({"1.30", f"{newest[0]}.{newest[1]}"})


VERSIONS = _versions()


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def label(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


WEFT = load(WEFT_YAML)
EXAMPLE_OBJECTS = [(path, obj) for path in EXAMPLES for obj in load(path)]
ALL = [(WEFT_YAML, obj) for obj in WEFT] + EXAMPLE_OBJECTS


def only(kind: str, name: str, objects: list[dict[str, Any]] = WEFT) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def is_custom(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].split("/")[0] == GROUP


def crd_for(obj: dict[str, Any]) -> dict[str, Any]:
    return only("CustomResourceDefinition", f"{KINDS[obj['kind']].plural}.{GROUP}")


def pod_spec(name: str) -> dict[str, Any]:
    return only("DaemonSet", name)["spec"]["template"]["spec"]


def container(daemonset: str, name: str) -> dict[str, Any]:
    spec = pod_spec(daemonset)
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"{daemonset} has no single container {name}"
    return found[0]


# --- every object is valid ---------------------------------------------------------

def test_every_document_is_a_named_object() -> None:
    assert WEFT and EXAMPLE_OBJECTS
    seen = set()
    for path, obj in ALL:
        assert isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind"), path
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert key not in seen, f"{path}: {key} twice"
        seen.add(key)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("path", "obj"), [pytest.param(p, o, id=f"{p.name}:{label(o)}")
                                           for p, o in ALL if not is_custom(o)])
def test_object_validates_strictly(path: Path, obj: dict[str, Any], version: str) -> None:
    """Strict: a misspelt or misplaced field fails, as kubectl's field validation does."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "/"
        problem = f"{path.name} {label(obj)} at {where}: {err.message}"
    else:
        return
    pytest.fail(problem)


@pytest.mark.parametrize(("path", "obj"), [pytest.param(p, o, id=f"{p.name}:{label(o)}")
                                           for p, o in ALL if is_custom(o)])
def test_custom_object_validates_against_its_crd(path: Path, obj: dict[str, Any]) -> None:
    problems = crd_problems(obj)
    assert not problems, f"{path.name} {label(obj)}: {problems}"


def test_weft_yaml_holds_no_custom_objects_and_applies_in_order() -> None:
    """kubectl maps every object of a file before creating any: a custom object beside
    its CRD fails on a fresh cluster. And definitions come before what uses them."""
    assert not [label(o) for o in WEFT if is_custom(o)]
    order = ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ConfigMap",
             "DaemonSet"]
    ranks = [order.index(o["kind"].replace("Binding", "")) for o in WEFT]
    assert ranks == sorted(ranks), [o["kind"] for o in WEFT]
    for obj in WEFT:
        if obj["kind"] in ("ServiceAccount", "ConfigMap", "DaemonSet"):
            assert obj["metadata"].get("namespace") == NAMESPACE, label(obj)


# --- the CRDs ----------------------------------------------------------------------

def closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it to requests with kubectl's strict
    field validation: unknown fields are errors (objects without properties stay open)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and \
            not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def crd_problems(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(closed(schema_of(crd_for(obj))))
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '/'}: {e.message}"
                  for e in validator.iter_errors(obj))


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


CRDS = [o for o in WEFT if o["kind"] == "CustomResourceDefinition"]


def test_crds_are_weft_kinds_cluster_scoped_v1() -> None:
    names = {o["spec"]["names"]["kind"]: o for o in CRDS}
    assert set(names) == {"IPPool", "IPAMBlock"}
    for kind, crd in names.items():
        group, _, version = KINDS[kind].api_version.partition("/")
        assert crd["metadata"]["name"] == f"{KINDS[kind].plural}.{group}"
        assert crd["spec"]["group"] == group
        assert crd["spec"]["names"]["plural"] == KINDS[kind].plural
        assert crd["spec"]["scope"] == ("Namespaced" if KINDS[kind].namespaced else "Cluster")
        assert [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]] == \
            [(version, True, True)]


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c["metadata"]["name"])
def test_crd_schema_is_structural(crd: dict[str, Any]) -> None:
    """What the API server demands of a v1 CRD schema, and defaults that pass it."""
    for path, node in walk(schema_of(crd)):
        assert "type" in node, f"{path or '/'}: no type"
        if "properties" in node:
            assert node["type"] == "object" and "additionalProperties" not in node, path
        if node["type"] == "array":
            assert "items" in node, path
        if "default" in node:
            jsonschema.validate(node["default"], node)
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) == {"rule", "message"}, f"{path}: {rule}"


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c["metadata"]["name"])
def test_printer_columns_point_at_schema_fields(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    fields = dict(walk(schema_of(crd)))
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        assert path in fields, f"column {column['name']}: {path} is not in the schema"
        assert column["type"] == fields[path]["type"], column["name"]


def test_printer_columns_are_the_ones_kubectl_get_shows() -> None:
    def columns(plural: str) -> list[str]:
        (version,) = only("CustomResourceDefinition", f"{plural}.{GROUP}")["spec"]["versions"]
        return [c["jsonPath"] for c in version["additionalPrinterColumns"]
                if not c.get("priority")]

    assert columns("ippools") == [".spec.cidr", ".spec.blockSize", ".spec.vxlanMode",
                                  ".spec.natOutgoing", ".metadata.creationTimestamp"]
    assert columns("ipamblocks") == [".spec.cidr", ".spec.node", ".spec.pool",
                                     ".status.allocated", ".metadata.creationTimestamp"]


def test_ipamblock_status_is_a_subresource() -> None:
    (version,) = only("CustomResourceDefinition", f"ipamblocks.{GROUP}")["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert "status" in schema_of(only("CustomResourceDefinition", f"ipamblocks.{GROUP}")
                                 )["properties"]


def test_ippool_schema_matches_weft_pools() -> None:
    spec = schema_of(only("CustomResourceDefinition", f"ippools.{GROUP}"))["properties"]["spec"]
    assert spec["required"] == ["cidr"]
    assert spec["properties"]["vxlanMode"]["enum"] == list(VXLAN_MODES)
    assert spec["properties"]["vxlanMode"]["default"] == DEFAULT_POOL["vxlanMode"]
    assert spec["properties"]["natOutgoing"]["default"] == DEFAULT_POOL["natOutgoing"]
    size = spec["properties"]["blockSize"]
    assert (size["minimum"], size["maximum"]) == (20, 128)
    pattern = re.compile(spec["properties"]["cidr"]["pattern"])
    for good in ("10.244.0.0/16", "192.168.0.0/24", "fd00:10:244::/48", "::/0"):
        assert pattern.match(good), good
    for bad in ("10.244.0.0", "pool", "10.244.0.0/16 ", "fd00::"):
        assert not pattern.match(bad), bad


def pool(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": spec}


@pytest.mark.parametrize(("obj", "field"), [
    (pool(), "cidr"),
    (pool(cidr=["10.0.0.0/8"]), "cidr"),
    (pool(cidr="10.0.0.0"), "cidr"),
    (pool(cidr="10.0.0.0/8", blockSize="26"), "blockSize"),
    (pool(cidr="10.0.0.0/8", blockSize=16), "blockSize"),
    (pool(cidr="10.0.0.0/8", blockSize=129), "blockSize"),
    (pool(cidr="10.0.0.0/8", vxlanMode="always"), "vxlanMode"),
    (pool(cidr="10.0.0.0/8", natOutgoing="yes"), "natOutgoing"),
    (pool(cidr="10.0.0.0/8", nodeSelector={"zone": 1}), "nodeSelector"),
    (pool(cidr="10.0.0.0/8", natOutgoign=True), "natOutgoign"),
    ({"apiVersion": f"{GROUP}/v1", "kind": "IPAMBlock", "metadata": {"name": "b"},
      "spec": {"cidr": "10.0.0.0/26", "node": "n"}}, "pool"),
    ({"apiVersion": f"{GROUP}/v1", "kind": "IPAMBlock", "metadata": {"name": "b"},
      "spec": {"cidr": "10.0.0.0/26", "node": "n", "pool": "p"},
      "status": {"allocated": -1}}, "allocated"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_crds_reject_broken_objects(obj: dict[str, Any], field: str) -> None:
    problems = crd_problems(obj)
    assert any(field in p for p in problems), problems


def test_crds_accept_what_weft_writes(tmp_path: Path) -> None:
    """The agent's default pool, the blocks the allocator claims and their status, made
    by weft's own code (on the local store), pass the CRDs' schemas."""
    store = LocalStore(tmp_path / "store")
    config = AgentConfig(node_name="node-a",
                         default_pool=configmap_data()["WEFT_DEFAULT_POOL"])
    NodeAgent._ensure_default_pool(SimpleNamespace(config=config, store=store))
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}})
    IPAM(store, tmp_path / "state", "node-a").assign(TUNNEL_HANDLE)
    (block,) = store.list("IPAMBlock")
    store.set_status("IPAMBlock", block["metadata"]["name"], {"allocated": 1})
    written = store.list("IPPool") + store.list("IPAMBlock")
    assert written[1]["status"] == {"allocated": 1}
    assert [o["kind"] for o in written] == ["IPPool", "IPAMBlock"]
    for obj in written:
        assert not crd_problems(obj), (label(obj), crd_problems(obj))


# --- RBAC --------------------------------------------------------------------------

def test_rbac_is_one_rule_per_resource_with_sorted_verbs() -> None:
    for role in (o for o in WEFT if o["kind"] == "ClusterRole"):
        for rule in role["rules"]:
            assert len(rule["apiGroups"]) == 1 and len(rule["resources"]) == 1, rule
            assert rule["verbs"] == sorted(set(rule["verbs"])), rule
            assert "*" not in str(rule), rule


def test_rbac_resources_are_the_kinds_weft_stores() -> None:
    groups = {k.plural: k.api_version.rpartition("/")[0] for k in KINDS.values()}
    roles = [o for o in WEFT if o["kind"] == "ClusterRole"]
    assert {r["metadata"]["name"] for r in roles} == set(ACCOUNTS)
    for role in roles:
        for rule in role["rules"]:
            for resource in rule["resources"]:
                assert rule["apiGroups"] == [groups[resource.split("/")[0]]], resource


@pytest.mark.parametrize("name", ACCOUNTS)
def test_each_daemonset_runs_as_its_own_bound_account(name: str) -> None:
    only("ServiceAccount", name)
    binding = only("ClusterRoleBinding", name)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                    "namespace": NAMESPACE}]
    assert pod_spec(name)["serviceAccountName"] == name


# --- the ConfigMap and the kind cluster agree with weft ------------------------------

def configmap_data() -> dict[str, str]:
    return only("ConfigMap", "weft-config")["data"]


def kind_config() -> dict[str, Any]:
    (config,) = load(KIND_YAML)
    return config


def test_kind_config() -> None:
    config = kind_config()
    assert (config["apiVersion"], config["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster")
    net = config["networking"]
    assert net["disableDefaultCNI"] is True
    assert net["kubeProxyMode"] == "none"
    assert net["podSubnet"] == "10.244.0.0/16"
    assert net["serviceSubnet"] == "10.96.0.0/16"
    assert sorted(n["role"] for n in config["nodes"]) == ["control-plane", "worker", "worker"]


def test_pool_is_weft_default_everywhere() -> None:
    cidr = DEFAULT_POOL["cidr"]
    data = configmap_data()
    assert data["WEFT_DEFAULT_POOL"] == cidr
    assert data["WEFT_CLUSTER_CIDR"] == cidr
    assert kind_config()["networking"]["podSubnet"] == cidr
    examples = [o for _, o in EXAMPLE_OBJECTS if o["kind"] == "IPPool"]
    assert [(o["metadata"]["name"], o["spec"]) for o in examples] == [("default", DEFAULT_POOL)]
    assert parse_pool(examples[0]["spec"], "default") == parse_pool(DEFAULT_POOL, "default")


def test_configmap_settings_are_ones_weft_reads() -> None:
    """A misspelt key would silently be ignored: each WEFT_* key must occur in the code."""
    source = "\n".join(p.read_text() for d in ("agent", "cni", "ipam", "weft")
                       for p in (ROOT / d).rglob("*.py"))
    for key, value in configmap_data().items():
        assert isinstance(value, str), key
        if key.startswith("WEFT_"):
            assert f'"{key}"' in source, f"weft-config sets {key}, which weft never reads"
        else:
            assert key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"), key


def test_api_server_is_kinds_control_plane() -> None:
    data = configmap_data()
    assert data["KUBERNETES_SERVICE_HOST"] == f"{kind_config()['name']}-control-plane"
    assert data["KUBERNETES_SERVICE_PORT"] == "6443"


# --- the DaemonSets ----------------------------------------------------------------

DAEMONSETS = ["weft-node", "weft-proxy"]


def containers_of(name: str) -> list[dict[str, Any]]:
    spec = pod_spec(name)
    return spec.get("initContainers", []) + spec["containers"]


def test_container_names() -> None:
    assert [c["name"] for c in pod_spec("weft-node")["initContainers"]] == ["install-cni"]
    assert [c["name"] for c in pod_spec("weft-node")["containers"]] == ["agent"]
    assert "initContainers" not in pod_spec("weft-proxy")
    assert [c["name"] for c in pod_spec("weft-proxy")["containers"]] == ["proxy"]


@pytest.mark.parametrize("name", DAEMONSETS)
def test_daemonset_runs_on_every_node_in_the_host_network(name: str) -> None:
    ds = only("DaemonSet", name)
    assert ds["metadata"]["namespace"] == NAMESPACE
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1}}
    spec = pod_spec(name)
    assert spec["hostNetwork"] is True
    # Cluster DNS needs what these pods bring up: they use the node's resolver.
    assert spec["dnsPolicy"] == "Default"
    assert spec["priorityClassName"] == "system-node-critical"
    tolerations = spec["tolerations"]
    assert {"operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert {"operator": "Exists", "effect": "NoExecute"} in tolerations
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in tolerations


@pytest.mark.parametrize("name", DAEMONSETS)
def test_containers_use_the_local_image_settings_and_resources(name: str) -> None:
    for c in containers_of(name):
        assert (c["image"], c["imagePullPolicy"]) == (IMAGE, "IfNotPresent"), c["name"]
        assert {"configMapRef": {"name": "weft-config"}} in c["envFrom"], c["name"]
        assert c["env"][0] == {"name": "WEFT_NODE_NAME",
                               "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        assert c["resources"]["requests"].keys() == {"cpu", "memory"}, c["name"]
        assert c["resources"]["limits"].keys() == {"memory"}, c["name"]


def host_paths(name: str) -> dict[str, str]:
    """volume name -> host path."""
    return {v["name"]: v["hostPath"]["path"] for v in pod_spec(name)["volumes"]
            if "hostPath" in v}


def mounts(name: str, container_name: str) -> dict[str, dict[str, Any]]:
    """host path -> the container's mount of it."""
    paths = host_paths(name)
    return {paths[m["name"]]: m for m in container(name, container_name)["volumeMounts"]}


def test_weft_node_mounts_exactly_the_host_paths_it_needs() -> None:
    paths = host_paths("weft-node")
    assert sorted(paths.values()) == sorted(NODE_HOST_PATHS)
    assert len(pod_spec("weft-node")["volumes"]) == len(paths), "only hostPath volumes"
    used = set(mounts("weft-node", "install-cni")) | set(mounts("weft-node", "agent"))
    assert used == NODE_HOST_PATHS


def test_install_cni_mounts_the_host_paths_at_their_own_paths() -> None:
    """`weft install` writes host paths into the stubs and the kubeconfig: it must see
    the host's directories where the host has them."""
    have = {path: m["mountPath"] for path, m in mounts("weft-node", "install-cni").items()}
    assert have == {p: p for p in ("/opt/cni/bin", "/etc/cni/net.d", "/opt/weft")}
    install = container("weft-node", "install-cni")
    assert not install["securityContext"].get("privileged")
    assert install["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_agent_shares_socket_state_and_kubeconfig_at_the_hosts_paths() -> None:
    """The CNI binary on the host and the agent in its container meet at the same paths."""
    have = mounts("weft-node", "agent")
    for path in (os.path.dirname(DEFAULT_SOCKET), DEFAULT_STATE_DIR,
                 os.path.dirname(DEFAULT_KUBECONFIG), "/run/netns", "/lib/modules",
                 "/run/xtables.lock"):
        assert have[path]["mountPath"] == path, path
    assert have["/run/netns"]["mountPropagation"] == "HostToContainer"
    assert have["/lib/modules"]["readOnly"] is True
    # The agent keeps the CNI binary's kubeconfig fresh: it writes there.
    assert not have[os.path.dirname(DEFAULT_KUBECONFIG)].get("readOnly")
    env = {e["name"]: e.get("value") for e in container("weft-node", "agent")["env"]}
    assert env["WEFT_CNI_KUBECONFIG"] == DEFAULT_KUBECONFIG


def test_host_path_types() -> None:
    types = {v["hostPath"]["path"]: v["hostPath"].get("type", "")
             for v in pod_spec("weft-node")["volumes"]}
    assert types["/run/xtables.lock"] == "FileOrCreate"
    for path in DESIGN_HOST_PATHS | {"/run/netns"}:
        assert types[path] == "DirectoryOrCreate", path


def test_agent_is_privileged_and_the_proxy_has_only_its_capabilities() -> None:
    assert container("weft-node", "agent")["securityContext"] == {"privileged": True}
    proxy = container("weft-proxy", "proxy")["securityContext"]
    assert not proxy.get("privileged")
    assert proxy["allowPrivilegeEscalation"] is False
    assert proxy["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert [v["hostPath"]["path"] for v in pod_spec("weft-proxy")["volumes"]] == \
        ["/run/xtables.lock"]


# The containers' command lines, parsed by weft's own parser in the environment the
# container gets: the ConfigMap (envFrom), then its own env.

@pytest.fixture
def container_env(monkeypatch: pytest.MonkeyPatch):
    def apply(c: dict[str, Any], node: str = "node-a", host_ip: str = "192.0.2.7") -> None:
        for key in list(os.environ):
            if key.startswith(("WEFT_", "KUBERNETES_")):
                monkeypatch.delenv(key)
        for source in c.get("envFrom", []):
            for key, value in only("ConfigMap", source["configMapRef"]["name"])["data"].items():
                monkeypatch.setenv(key, value)
        for var in c.get("env", []):
            if var.get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}}:
                monkeypatch.setenv(var["name"], node)
            elif var.get("valueFrom") == {"fieldRef": {"fieldPath": "status.hostIP"}}:
                monkeypatch.setenv(var["name"], host_ip)
            else:
                monkeypatch.setenv(var["name"], var["value"])

    return apply


def parse(command: list[str]) -> argparse.Namespace:
    assert command[0] == "weft"
    return cli.build_parser().parse_args(command[1:])


def probe_ports(c: dict[str, Any]) -> set[int]:
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probes = [c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c]
    assert {p["httpGet"]["path"] for p in probes} == {"/healthz", "/readyz"}
    return {ports[p["httpGet"]["port"]] for p in probes}


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_agent_command_and_environment(container_env) -> None:
    agent = container("weft-node", "agent")
    container_env(agent)
    args = parse(agent["command"])
    config = AgentConfig.from_args(args)
    assert args.command == "agent" and args.action == "run"
    assert config.node_name == "node-a"
    # The node IP kubelet registered (its InternalIP), not a guess from the default route.
    assert config.node_ip == "192.0.2.7"
    assert config.datastore == "kubernetes"
    assert config.kubeconfig == "", "in-cluster: the pod's service account"
    assert config.default_pool == DEFAULT_POOL["cidr"]
    # The agent writes the conflist once it has reconciled: the runtime takes it as the
    # node's network being ready.
    assert config.cni_conf_dir == os.path.dirname(DEFAULT_KUBECONFIG)
    assert config.cni_conf_dir == mounts("weft-node", "agent")[config.cni_conf_dir][
        "mountPath"]
    assert (config.socket, config.state_dir) == (DEFAULT_SOCKET, DEFAULT_STATE_DIR)
    assert probe_ports(agent) == {port_of(config.health_address)} == {9645}
    assert config.health_address.startswith("0.0.0.0:"), "kubelet probes the node's IP"
    assert config.cni_workers == 2


def test_cni_workers_must_be_a_sane_count(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WEFT_CNI_WORKERS", "3")
    assert AgentConfig.from_args(parse(["weft", "agent"])).cni_workers == 3
    for bad in ("-1", "many", "65"):
        with pytest.raises(SystemExit):
            parse(["weft", "agent", "--cni-workers", bad])
        assert f"{bad} CNI workers: choose 0 to 64" in capsys.readouterr().err


def test_proxy_command_and_environment(container_env) -> None:
    proxy = container("weft-proxy", "proxy")
    container_env(proxy)
    args = parse(proxy["command"])
    assert (args.command, args.action, args.datastore) == ("proxy", "run", "kubernetes")
    assert args.node_name == "node-a"
    assert args.cluster_cidr == DEFAULT_POOL["cidr"]
    assert probe_ports(proxy) == {port_of(args.health_address)} == {9646}


def test_install_command_and_environment(container_env) -> None:
    install = container("weft-node", "install-cni")
    container_env(install)
    args = parse(install["command"])
    assert args.command == "install"
    assert args.datastore == "kubernetes"
    mounted = mounts("weft-node", "install-cni")
    for flag, path in (("runtime_dir", "/opt/weft"), ("bin_dir", "/opt/cni/bin"),
                       ("conf_dir", os.path.dirname(DEFAULT_KUBECONFIG))):
        assert getattr(args, flag) == path == mounted[path]["mountPath"], flag
    # The kubeconfig it writes for the host points at the API server these name.
    assert os.environ["KUBERNETES_SERVICE_HOST"] == f"{kind_config()['name']}-control-plane"


# --- the example workload ----------------------------------------------------------

def test_connectivity_example_spreads_pods_and_serves_them() -> None:
    objects = load(MANIFESTS / "examples" / "connectivity.yaml")
    namespace = only("Namespace", "weft-check", objects)["metadata"]["name"]
    deploy = only("Deployment", "echo", objects)
    assert deploy["metadata"]["namespace"] == namespace
    assert deploy["spec"]["replicas"] == len(kind_config()["nodes"])
    template = deploy["spec"]["template"]
    labels = template["metadata"]["labels"]
    (term,) = template["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    services = [o for o in objects if o["kind"] == "Service"]
    assert sorted(s["spec"]["type"] for s in services) == ["ClusterIP", "NodePort"]
    for svc in services:
        assert svc["metadata"]["namespace"] == namespace
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names
            assert 30000 <= port.get("nodePort", 30000) <= 32767


# --- what the guide tells people to run ----------------------------------------------

def test_kind_guide_uses_these_files_and_names() -> None:
    guide = (ROOT / "docs" / "kind.md").read_text()
    cluster = kind_config()["name"]
    for command in ("kind create cluster --config manifests/kind.yaml",
                    f"docker build -t {IMAGE} .",
                    f"kind load docker-image {IMAGE} --name {cluster}",
                    "kubectl apply -f manifests/weft.yaml",
                    "kubectl -n kube-system rollout status ds/weft-node",
                    "kubectl -n kube-system rollout status ds/weft-proxy",
                    "kubectl get ippools,ipamblocks",
                    "kubectl apply -f manifests/examples/connectivity.yaml",
                    "kubectl delete -f manifests/weft.yaml"):
        assert command in guide, command


def test_connectivity_example_uses_the_agnhost_the_kubernetes_lab_builds() -> None:
    from weft.lab.kube.components import AGNHOST_IMAGE

    deploy = only("Deployment", "echo", load(MANIFESTS / "examples" / "connectivity.yaml"))
    images = {c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]}
    assert images == {AGNHOST_IMAGE}
