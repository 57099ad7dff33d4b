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
