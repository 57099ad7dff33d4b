"""Allocation on a node, against the local datastore in a temporary directory."""

import os
import time
from concurrent.futures import ProcessPoolExecutor

import netaddr
import pytest

from weft.cni.errors import CNIError
from weft.ipam.allocator import IPAM, TUNNEL_HANDLE
from weft.ipam.datastore import DatastoreError
from weft.ipam.local import LocalStore
from weft.ipam.pools import parse_pool


def make(tmp_path, node="n1", pools=("10.244.0.0/24",), block=28):
    store = LocalStore(tmp_path / "ds")
    inline = [parse_pool({"cidr": c, "blockSize": block + (96 if ":" in c else 0)})
              for c in pools]
    return IPAM(store, tmp_path / node, node, inline)


def test_assign_is_idempotent_per_handle_and_distinct_across_handles(tmp_path):
    ipam = make(tmp_path)
    first = ipam.assign("c1/eth0", "c1", "eth0", "default", "web")
    assert ipam.assign("c1/eth0")[0].address == first[0].address
    second = ipam.assign("c1/net1", "c1", "net1")
    assert first[0].address != second[0].address
    assert ipam.lookup("c1/eth0")[0].pod == "web"


def test_first_address_of_each_block_is_never_handed_out(tmp_path):
    ipam = make(tmp_path, pools=("10.244.0.0/28",), block=28)
    addresses = {ipam.assign(f"c{i}/eth0", f"c{i}", "eth0")[0].address for i in range(15)}
    assert "10.244.0.0" not in addresses
    assert len(addresses) == 15
    with pytest.raises(CNIError) as full:
        ipam.assign("c15/eth0", "c15", "eth0")
    assert full.value.code == 101
    assert "10.244.0.0/28" in full.value.msg


def test_a_full_block_makes_the_node_claim_another(tmp_path):
    ipam = make(tmp_path, block=28)
    for i in range(16):
        ipam.assign(f"c{i}/eth0", f"c{i}", "eth0")
    blocks = ipam.blocks()
    assert len(blocks) == 2
    objects = ipam.store.list("IPAMBlock")
    assert sorted(o["spec"]["cidr"] for o in objects) == sorted(b.cidr for b in blocks)
    assert {o["spec"]["node"] for o in objects} == {"n1"}


def test_release_frees_and_the_next_pod_does_not_reuse_it_at_once(tmp_path):
    ipam = make(tmp_path)
    freed = ipam.assign("a/eth0", "a", "eth0")[0].address
    assert [a.address for a in ipam.release("a/eth0")] == [freed]
    assert ipam.release("a/eth0") == []
    assert ipam.assign("b/eth0", "b", "eth0")[0].address != freed


def test_gc_keeps_listed_pods_and_never_touches_node_addresses(tmp_path):
    ipam = make(tmp_path)
    ipam.assign(TUNNEL_HANDLE)
    ipam.assign("keep/eth0", "keep", "eth0")
    ipam.assign("lose/eth0", "lose", "eth0")
    freed = ipam.gc(lambda alloc: alloc.handle == "keep/eth0")
    assert [a.handle for a in freed] == ["lose/eth0"]
    assert ipam.lookup(TUNNEL_HANDLE) and ipam.lookup("keep/eth0")


def test_dual_stack_pools_give_one_address_per_family(tmp_path):
    ipam = make(tmp_path, pools=("10.244.0.0/24", "fd00:10::/120"), block=28)
    versions = sorted(netaddr.IPAddress(a.address).version for a in ipam.assign("d/eth0"))
    assert versions == [4, 6]


def test_datastore_pools_are_used_when_none_are_inline(tmp_path):
    store = LocalStore(tmp_path / "ds")
    ipam = IPAM(store, tmp_path / "n1", "n1")
    with pytest.raises(CNIError, match="no usable IP pool"):
        ipam.assign("x/eth0")
    store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
                  "spec": {"cidr": "10.250.0.0/16", "blockSize": 26, "disabled": False}})
    assert ipam.assign("x/eth0")[0].address.startswith("10.250.")


def _claim_all(args):
    root, node = args
    ipam = IPAM(LocalStore(f"{root}/ds"), f"{root}/{node}", node,
                [parse_pool({"cidr": "10.244.0.0/24", "blockSize": 28})])
    got = []
    for i in range(60):
        try:
            got.append(ipam.assign(f"{node}-{i}/eth0", f"{node}-{i}", "eth0")[0].address)
        except CNIError:
            break
    return node, got, [b.cidr for b in ipam.blocks()]


def test_nodes_racing_for_blocks_never_share_one(tmp_path):
    nodes = [f"node-{i}" for i in range(4)]
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_claim_all, [(str(tmp_path), n) for n in nodes]))
    all_blocks = [b for _, _, blocks in results for b in blocks]
    all_addresses = [a for _, got, _ in results for a in got]
    assert len(all_blocks) == len(set(all_blocks)) == 16
    assert len(all_addresses) == len(set(all_addresses)) == 16 * 15


def test_blocks_of_overlapping_pools_never_overlap(tmp_path):
    store = LocalStore(tmp_path / "ds")
    big = IPAM(store, tmp_path / "a", "a", [parse_pool({"cidr": "10.9.0.0/24", "blockSize": 26})])
    small = IPAM(store, tmp_path / "b", "b", [parse_pool({"cidr": "10.9.0.0/24",
                                                          "blockSize": 28})])
    big.assign("x/eth0", "x", "eth0")
    small.assign("y/eth0", "y", "eth0")
    (big_block,), (small_block,) = big.blocks(), small.blocks()
    assert not netaddr.IPSet([big_block.cidr]) & netaddr.IPSet([small_block.cidr])


class CountingStore(LocalStore):
    """A local store that counts reads and can go away, as an API server can."""

    def __init__(self, root):
        super().__init__(root)
        self.reads, self.away = 0, False

    def list(self, kind, namespace="", node=""):
        self.reads += 1
        if self.away:
            raise DatastoreError("connection refused")
        return super().list(kind, namespace)

    def get(self, kind, name, namespace=""):
        self.reads += 1
        if self.away:
            raise DatastoreError("connection refused")
        return super().get(kind, name, namespace)


def test_pods_cost_no_datastore_reads_and_survive_the_datastore_going_away(tmp_path):
    store = CountingStore(tmp_path / "ds")
    store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
                  "spec": {"cidr": "10.250.0.0/16", "blockSize": 26}})
    ipam = IPAM(store, tmp_path / "n1", "n1")
    ipam.assign("first/eth0", "first", "eth0")  # reads pools, claims a block
    reads = store.reads
    for i in range(5):
        ipam.assign(f"p{i}/eth0", f"p{i}", "eth0")
    assert store.reads == reads

    store.away = True
    stale = time.time() - 3600
    os.utime(tmp_path / "n1" / "ipam" / "pools.json", (stale, stale))
    assert ipam.assign("later/eth0", "later", "eth0")[0].address.startswith("10.250.")
