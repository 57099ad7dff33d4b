"""A node's blocks stay claimed in the datastore while it allocates from them."""

from __future__ import annotations

import pytest

from weft.ipam.local import LocalStore
from weft.lab import netns

from ..waiting import eventually

pytestmark = pytest.mark.integration


def test_a_block_whose_ipamblock_vanished_is_claimed_again(node):
    """What a deleted and re-registered Node does: the garbage collector deletes its
    IPAMBlocks, while the node still hands out addresses from them."""
    node.start_agent("--resync-seconds", "1")
    runtime = node.runtime()
    pod = node.new_pod()
    address = runtime.add("ctr-kept", netns.path(pod))["ips"][0]["address"].split("/")[0]
    store = LocalStore(node.datastore_path)
    (block,) = store.list("IPAMBlock")
    store.delete("IPAMBlock", block["metadata"]["name"])

    def claimed_again() -> bool:
        now = store.get("IPAMBlock", block["metadata"]["name"])
        return now is not None and now["spec"] == block["spec"]
    assert eventually(claimed_again, seconds=15), (node.root / "agent.log").read_text()
    # The pod keeps its address, and the node's next pod comes from the same block.
    assert [a["address"] for a in node.allocations()] == [address]
    second = runtime.add("ctr-next", netns.path(node.new_pod()))["ips"][0]["address"]
    assert second.split("/")[0] != address and len(store.list("IPAMBlock")) == 1


def test_a_node_registered_again_gets_its_claims_and_annotations_back(node):
    """kubelet registers a deleted Node anew, bare: without weft's annotations no peer
    routes to the node, and without its IPAMBlocks another node may take its addresses.
    The change itself must bring both back (no periodic resync in this test)."""
    node.start_agent("--resync-seconds", "3600")
    store = LocalStore(node.datastore_path)
    runtime = node.runtime()
    runtime.add("ctr-kept", netns.path(node.new_pod()))

    def annotations() -> dict:
        found = store.get("Node", node.name) or {}
        return {k: v for k, v in (found.get("metadata", {}).get("annotations") or {}).items()
                if k.startswith("weft.dev/")}
    assert eventually(lambda: len(annotations()) == 3, seconds=10)
    published, (block,) = annotations(), store.list("IPAMBlock")

    store.delete("Node", node.name)  # and, as the garbage collector would, its blocks
    assert store.list("IPAMBlock") == []
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}})

    assert eventually(lambda: annotations() == published, seconds=10), \
        (node.root / "agent.log").read_text()
    assert eventually(lambda: [b["spec"] for b in store.list("IPAMBlock")] == [block["spec"]],
                      seconds=10)
