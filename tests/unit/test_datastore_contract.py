"""One contract, two datastores: the local directory and the Kubernetes API.

The Kubernetes store talks real HTTP (urllib3, through the official client) to kmock's
KubernetesEmulator on 127.0.0.1, run in a thread with its own event loop. The
emulator is taught the few things of a real API server the contract depends on and
it lacks (see `ApiServer`).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weft.cni.errors import POOL_EXHAUSTED, CNIError
from weft.ipam.allocator import IPAM
from weft.ipam.datastore import (
    AlreadyExists,
    Datastore,
    DatastoreError,
    NotFound,
    Object,
    open_datastore,
)
from weft.ipam.kubernetes import KubernetesStore
from weft.ipam.local import LocalStore
from weft.ipam.pools import Pool, parse_pool, start_index

from ..kmock_api import ApiServer, Emulator
from ..waiting import eventually


@dataclass
class Backend:
    name: str
    store: Datastore
    emulator: Emulator | None = None

    @property
    def api(self) -> ApiServer:
        assert self.emulator is not None and self.emulator.api is not None
        return self.emulator.api


@pytest.fixture(params=["local", "kubernetes"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield Backend("local", LocalStore(tmp_path / "datastore"))
        return
    with Emulator() as emulator:
        store = open_datastore("kubernetes", str(emulator.kubeconfig(tmp_path / "kubeconfig")))
        assert isinstance(store, KubernetesStore)
        try:
            yield Backend("kubernetes", store, emulator)
        finally:
            store.close()
    left = [t.name for t in threading.enumerate() if t.name.startswith("weft-watch")]
    assert not left, f"watch threads left running: {left}"


def node(name: str, **meta: Any) -> Object:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, **meta}}


def service(name: str, namespace: str = "") -> Object:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}


def pool(name: str, cidr: str = "10.244.0.0/16") -> Object:
    return {"apiVersion": "weft.dev/v1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": 26}}


def changed(store: Datastore, kinds: Sequence[str], old: str, timeout: float = 5.0) -> str:
    """The next revision: at once for the local store, within seconds for a watch."""
    deadline = time.monotonic() + timeout
    while (now := store.revision(kinds)) == old:
        assert time.monotonic() < deadline, f"revision stayed {old!r} for {timeout}s"
        time.sleep(0.02)
    return now


def assert_steady(store: Datastore, kinds: Sequence[str], value: str,
                  seconds: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert store.revision(kinds) == value, "revision changed with nothing changing"
        time.sleep(0.05)


# -- the contract -------------------------------------------------------------


def test_create_is_exclusive_and_returns_the_stored_object(backend: Backend) -> None:
    store = backend.store
    created = store.create(pool("default"))
    assert created["apiVersion"] == "weft.dev/v1" and created["kind"] == "IPPool"
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert created["spec"] == {"cidr": "10.244.0.0/16", "blockSize": 26}
    with pytest.raises(AlreadyExists, match="IPPool default"):
        store.create(pool("default", "10.96.0.0/16"))
    kept = store.get("IPPool", "default")
    assert kept is not None
    assert kept["spec"]["cidr"] == "10.244.0.0/16"
    assert kept["metadata"]["uid"] == created["metadata"]["uid"]


def test_get_of_a_missing_object_is_none(backend: Backend) -> None:
    store = backend.store
    assert store.get("Node", "nowhere") is None
    assert store.get("Service", "nowhere", "kube-system") is None
    store.create(service("dns", "kube-system"))
    assert store.get("Service", "dns") is None  # namespaced: looked up in `default`
    assert store.get("Service", "dns", "kube-system") is not None


def test_apply_creates_then_replaces_keeping_the_uid(backend: Backend) -> None:
    store = backend.store
    created = store.apply(node("n1", labels={"zone": "a"}))
    assert created["metadata"]["uid"]
    assert store.get("Node", "n1")["metadata"]["labels"] == {"zone": "a"}
    replaced = store.apply(node("n1", labels={"rack": "7"}))
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["labels"] == {"rack": "7"}
    stored = store.get("Node", "n1")
    assert stored["metadata"]["uid"] == created["metadata"]["uid"]
    assert stored["metadata"]["labels"] == {"rack": "7"}  # replaced, not merged
    assert [n["metadata"]["name"] for n in store.list("Node")] == ["n1"]


def test_list_filters_by_namespace_and_lists_all_when_empty(backend: Backend) -> None:
    store = backend.store
    store.create(service("dns", "kube-system"))
    store.create(service("web", "shop"))
    store.create(service("db", "shop"))
    store.create(service("api"))  # into `default`
    assert sorted(s["metadata"]["name"] for s in store.list("Service", "shop")) == ["db", "web"]
    assert [s["metadata"]["name"] for s in store.list("Service", "default")] == ["api"]
    assert store.list("Service", "empty") == []
    everything = store.list("Service")
    assert sorted((s["metadata"]["namespace"], s["metadata"]["name"]) for s in everything) == [
        ("default", "api"), ("kube-system", "dns"), ("shop", "db"), ("shop", "web")]
    assert {(s["apiVersion"], s["kind"]) for s in everything} == {("v1", "Service")}
    assert store.list("EndpointSlice") == []


def test_list_by_node_gives_only_that_nodes_pods(backend: Backend) -> None:
    store = backend.store
    for name, node_name in (("a", "n1"), ("b", "n2"), ("c", "n1"), ("d", "")):
        store.create({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": name, "namespace": "default"},
                      "spec": {"containers": [{"name": "c", "image": "pause"}],
                               **({"nodeName": node_name} if node_name else {})}})
    assert sorted(p["metadata"]["name"] for p in store.list("Pod", node="n1")) == ["a", "c"]
    assert [p["metadata"]["name"] for p in store.list("Pod", node="n2")] == ["b"]
    assert len(store.list("Pod")) == 4
    if backend.emulator is not None:
        # The API server filters: an agent never lists every pod of the cluster.
        queries = [q for _token, method, path, q in backend.api.calls
                   if method == "GET" and path.endswith("/pods")]
        assert {q.get("fieldSelector") for q in queries} == {
            "spec.nodeName=n1", "spec.nodeName=n2", None}


def test_delete_returns_true_then_false(backend: Backend) -> None:
    store = backend.store
    store.create(node("n1"))
    store.create(service("web", "shop"))
    assert store.delete("Node", "n1") is True
    assert store.get("Node", "n1") is None
    assert store.delete("Node", "n1") is False
    assert store.delete("Service", "web") is False  # not in `default`
    assert store.delete("Service", "web", "shop") is True
    assert store.delete("Service", "web", "shop") is False
    assert store.list("Service") == []
    store.create(node("n1"))  # the name is free again
    assert store.get("Node", "n1") is not None


def test_annotate_merges_and_needs_the_object(backend: Backend) -> None:
    store = backend.store
    store.create(node("n1", annotations={"keep": "me", "weft.dev/node-ip": "old"},
                      labels={"zone": "a"}))
    store.annotate("Node", "n1", {"weft.dev/node-ip": "192.0.2.1",
                                  "weft.dev/vtep-mac": "02:00:00:00:00:01"})
    meta = store.get("Node", "n1")["metadata"]
    assert meta["annotations"] == {"keep": "me", "weft.dev/node-ip": "192.0.2.1",
                                   "weft.dev/vtep-mac": "02:00:00:00:00:01"}
    assert meta["labels"] == {"zone": "a"}
    store.create(service("web", "shop"))
    store.annotate("Service", "web", {"a": "b"}, "shop")
    assert store.get("Service", "web", "shop")["metadata"]["annotations"] == {"a": "b"}
    with pytest.raises(NotFound):
        store.annotate("Node", "nowhere", {"a": "b"})
    with pytest.raises(NotFound):
        store.annotate("Service", "web", {"a": "b"})  # not in `default`
    assert store.get("Node", "nowhere") is None


def test_set_status_merges_into_the_status_and_needs_the_object(backend: Backend) -> None:
    store = backend.store
    store.create({"apiVersion": "weft.dev/v1", "kind": "IPAMBlock",
                  "metadata": {"name": "10-244-0-0-26"},
                  "spec": {"cidr": "10.244.0.0/26", "node": "n1", "pool": "default"}})
    store.set_status("IPAMBlock", "10-244-0-0-26", {"allocated": 3})
    block = store.get("IPAMBlock", "10-244-0-0-26")
    assert block["status"] == {"allocated": 3}
    assert block["spec"]["node"] == "n1"
    with pytest.raises(NotFound):
        store.set_status("IPAMBlock", "10-9-9-0-26", {"allocated": 1})


def test_revision_changes_with_the_watched_kinds_and_only_then(backend: Backend) -> None:
    store = backend.store
    kinds = ["IPPool", "IPAMBlock"]
    start = store.revision(kinds)
    assert_steady(store, kinds, start)
    store.create(pool("default"))
    created = changed(store, kinds, start)
    applied = pool("default", "10.245.0.0/16")
    applied["metadata"]["labels"] = {"changed": "yes"}
    store.apply(applied)
    replaced = changed(store, kinds, created)
    store.create({"apiVersion": "weft.dev/v1", "kind": "IPAMBlock",
                  "metadata": {"name": "10-244-0-0-26"},
                  "spec": {"cidr": "10.244.0.0/26", "pool": "default", "node": "n1"}})
    claimed = changed(store, kinds, replaced)
    store.delete("IPPool", "default")
    deleted = changed(store, kinds, claimed)
    assert len({start, created, replaced, claimed, deleted}) == 5
    assert_steady(store, kinds, deleted)


def test_wait_returns_at_a_change_and_at_its_timeout_without_one(backend: Backend) -> None:
    store = backend.store
    kinds = ["Node"]
    start = store.revision(kinds)
    assert store.wait(kinds, start, timeout=0.3) == start  # nothing changed: the timeout
    writer = threading.Timer(0.2, lambda: store.create(node("n1")))
    writer.start()
    try:
        # Far longer than the write takes: returning at all before it means it woke.
        woke = store.wait(kinds, start, timeout=30)
    finally:
        writer.join()
    assert woke != start
    assert woke == store.revision(kinds)


def test_cached_lists_what_the_watch_saw(backend: Backend) -> None:
    store = backend.store
    store.create(node("n1", labels={"a": "1"}))
    store.create(service("dns", "kube-system"))
    store.create(service("web", "default"))
    since = store.revision(["Node", "Service"])
    store.apply(node("n1", labels={"a": "2"}))
    store.delete("Service", "web", "default")
    store.wait(["Node", "Service"], since, timeout=5)
    assert eventually(lambda: [n["metadata"]["labels"] for n in store.cached("Node")]
                      == [{"a": "2"}] and len(store.cached("Service")) == 1)
    assert [s["metadata"]["name"] for s in store.cached("Service", "kube-system")] == ["dns"]
    assert store.cached("Service", "default") == []
    assert store.cached("Node")[0]["kind"] == "Node"  # complete, as list gives it


def _same_start(pool: Pool) -> tuple[str, str]:
    """Two node names that start their block search at the same block: every claim races."""
    seen: dict[int, str] = {}
    for i in itertools.count():
        name = f"node-{i}"
        index = start_index(name, pool)
        if index in seen:
            return seen[index], name
        seen[index] = name
    raise AssertionError("unreachable")


class LaggingBlocks:
    """A store whose IPAMBlock list is always empty, as a lagging cache could be:
    claims must then rest on the exclusive create alone."""

    def __init__(self, store: Datastore) -> None:
        self.store = store

    def list(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        return [] if kind == "IPAMBlock" else self.store.list(kind, namespace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.mark.parametrize("view", ["fresh", "lagging"])
def test_racing_nodes_never_claim_the_same_block(backend: Backend, tmp_path: Path,
                                                 view: str) -> None:
    the_pool = parse_pool({"cidr": "10.244.0.0/25", "blockSize": 28})
    nodes = _same_start(the_pool)
    store: Any = backend.store if view == "fresh" else LaggingBlocks(backend.store)
    ipams = {n: IPAM(store, tmp_path / n, n, [the_pool]) for n in nodes}
    start = threading.Barrier(len(nodes))
    outcome: dict[str, tuple[list[str], BaseException]] = {}

    def fill(name: str) -> None:
        got: list[str] = []
        start.wait(5)
        try:
            for i in itertools.count():
                got.extend(a.address for a in ipams[name].assign(f"{name}-{i}/eth0"))
        except BaseException as err:
            outcome[name] = (got, err)

    threads = [threading.Thread(target=fill, args=(n,)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for name in nodes:
        err = outcome[name][1]
        assert isinstance(err, CNIError) and err.code == POOL_EXHAUSTED, repr(err)

    owned = {n: {b.cidr for b in ipams[n].blocks()} for n in nodes}
    assert not owned[nodes[0]] & owned[nodes[1]], "two nodes hold the same block"
    assert owned[nodes[0]] | owned[nodes[1]] == {str(b) for b in the_pool.blocks_from(0)}
    stored = {o["spec"]["cidr"]: o["spec"]["node"] for o in backend.store.list("IPAMBlock")}
    assert stored == {cidr: n for n in nodes for cidr in owned[n]}
    addresses = [a for got, _ in outcome.values() for a in got]
    assert len(addresses) == len(set(addresses)) == the_pool.block_count * 15


def test_deleting_a_node_frees_its_blocks(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    uid = store.create(node("n1"))["metadata"]["uid"]
    store.create(node("n2"))
    inline = [parse_pool({"cidr": "10.244.0.0/24", "blockSize": 28})]
    for name in ("n1", "n2"):
        IPAM(store, tmp_path / name, name, inline).assign("c/eth0")
    blocks = {b["spec"]["node"]: b for b in store.list("IPAMBlock")}
    assert set(blocks) == {"n1", "n2"}
    # What the API server's garbage collector acts on: an owner reference with the uid.
    assert blocks["n1"]["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid}]
    assert store.delete("Node", "n1")
    if backend.emulator is None:
        assert [b["spec"]["node"] for b in store.list("IPAMBlock")] == ["n2"]
    else:
        # kmock has no garbage collector: check that the delete asked for one.
        assert backend.api.deletes[-1]["propagationPolicy"] in ("Background", "Foreground")


def test_a_broken_watch_resumes(backend: Backend) -> None:
    if backend.emulator is None:
        pytest.skip("the local store has no watch to break")
    store, api, emulator = backend.store, backend.api, backend.emulator
    kinds = ["Node"]
    before = store.revision(kinds)
    deadline = time.monotonic() + 5
    while api.watches < 1:
        assert time.monotonic() < deadline, "the store never started watching"
        time.sleep(0.02)
    lists = api.lists
    emulator.run(api.break_watches(expire=True))
    store.create(node("after-the-break"))
    after = changed(store, kinds, before)
    assert api.expired == 1, "the store never came back to watch"
    assert api.lists > lists, "a 410 Gone must make the store list again"
    # And the new watch is live, not just the relist.
    while api.watches < 3:
        assert time.monotonic() < deadline + 5, "no new watch after the relist"
        time.sleep(0.02)
    store.create(node("on-the-new-watch"))
    changed(store, kinds, after)


# -- the Kubernetes store's own behaviour ----------------------------------------


def test_kubernetes_apply_retries_conflicting_writes(backend: Backend) -> None:
    if backend.emulator is None:
        pytest.skip("only the API server has optimistic concurrency")
    store, api = backend.store, backend.api
    uid = store.create(node("n1", labels={"v": "0"}))["metadata"]["uid"]
    api.conflicts = 2  # two writers get in between our read and our replace
    applied = store.apply(node("n1", labels={"v": "1"}))
    assert api.conflicts == 0
    assert applied["metadata"]["uid"] == uid
    assert store.get("Node", "n1")["metadata"]["labels"] == {"v": "1"}
    api.conflicts = 100
    with pytest.raises(DatastoreError, match=r"failed to apply Node n1: .*conflicting"):
        store.apply(node("n1", labels={"v": "2"}))
    assert store.get("Node", "n1")["metadata"]["labels"] == {"v": "1"}


def test_kubernetes_store_failures_say_what_failed(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="failed to load the Kubernetes config"):
        KubernetesStore(str(tmp_path / "missing-kubeconfig"))
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: u}}]\n")
    store = KubernetesStore(str(kubeconfig))
    try:
        with pytest.raises(DatastoreError, match="failed to get Node n1: cannot reach"):
            store.get("Node", "n1")
        with pytest.raises(DatastoreError, match="failed to create IPAMBlock b1: "):
            store.create({"kind": "IPAMBlock", "metadata": {"name": "b1"}})
        with pytest.raises(DatastoreError, match="failed to list Pod in all namespaces"):
            store.list("Pod")
        with pytest.raises(DatastoreError, match="failed to annotate Service web/x: "):
            store.annotate("Service", "x", {"a": "b"}, "web")
        store.sync_timeout = 1.0
        first = store.revision(["Node"])  # never raises: the watch keeps retrying
        started = time.monotonic()
        assert store.revision(["Node"]) == first
        assert time.monotonic() - started < 0.5, "only the first call may wait for a list"
    finally:
        store.close()
