import pytest

from weft.ipam import local
from weft.ipam.datastore import AlreadyExists, DatastoreError
from weft.ipam.local import LocalStore


def node(name):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def test_create_is_exclusive_and_apply_replaces(tmp_path):
    store = LocalStore(tmp_path)
    created = store.create(node("a"))
    with pytest.raises(AlreadyExists):
        store.create(node("a"))
    updated = store.apply({**node("a"), "metadata": {"name": "a", "labels": {"x": "y"}}})
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert store.get("Node", "a")["metadata"]["labels"] == {"x": "y"}
    assert [n["metadata"]["name"] for n in store.list("Node")] == ["a"]


def test_namespaced_objects_default_to_the_default_namespace(tmp_path):
    store = LocalStore(tmp_path)
    store.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"}})
    store.apply({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "dns", "namespace": "kube-system"}})
    assert len(store.list("Service")) == 2
    assert store.get("Service", "dns", "kube-system")["metadata"]["namespace"] == "kube-system"
    assert [s["metadata"]["namespace"] for s in store.list("Service", "default")] == ["default"]


def test_deleting_a_node_deletes_the_blocks_it_owns(tmp_path):
    store = LocalStore(tmp_path)
    uid = store.create(node("a"))["metadata"]["uid"]
    store.create(node("b"))
    for name, owner, owner_uid in (("10-0-0-0-26", "a", uid), ("10-0-0-64-26", "b", "")):
        store.create({"apiVersion": "weft.dev/v1", "kind": "IPAMBlock",
                      "metadata": {"name": name, "ownerReferences": [
                          {"apiVersion": "v1", "kind": "Node", "name": owner,
                           "uid": owner_uid}]},
                      "spec": {"cidr": name, "node": owner}})
    assert store.delete("Node", "a")
    assert [b["metadata"]["name"] for b in store.list("IPAMBlock")] == ["10-0-0-64-26"]
    assert not store.delete("Node", "a")


def test_bad_objects_are_refused(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(DatastoreError, match="unknown kind 'Frob'"):
        store.apply({"kind": "Frob", "metadata": {"name": "x"}})
    with pytest.raises(DatastoreError, match=r"no metadata\.name"):
        store.apply({"kind": "Node", "metadata": {}})
    with pytest.raises(DatastoreError, match="not a valid object name"):
        store.apply({"kind": "Node", "metadata": {"name": "../etc"}})


def test_a_file_is_parsed_once_and_read_again_when_it_changes(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.create({"kind": "Node", "metadata": {"name": "n1", "labels": {"a": "1"}}})
    first = store.get("Node", "n1")
    first["metadata"]["labels"]["a"] = "changed by the caller"  # a copy of its own
    parses = []
    real_load = local.yaml.load
    monkeypatch.setattr(local.yaml, "load", lambda *a, **k: parses.append(1) or real_load(*a, **k))
    assert store.get("Node", "n1")["metadata"]["labels"] == {"a": "1"}
    assert parses == []
    store.apply({"kind": "Node", "metadata": {"name": "n1", "labels": {"a": "2"}}})
    assert store.list("Node")[0]["metadata"]["labels"] == {"a": "2"}
    assert parses == [1]
    # Another process's write (a new file renamed into place) is read too.
    other = LocalStore(tmp_path)
    other.apply({"kind": "Node", "metadata": {"name": "n1", "labels": {"a": "3"}}})
    assert store.get("Node", "n1")["metadata"]["labels"] == {"a": "3"}
