import netaddr
import pytest

from weft.ipam.pools import Pool, PoolError, block_name, parse_pool, start_index


def test_default_pool_cuts_into_1024_blocks_of_64():
    pool = parse_pool({"cidr": "10.244.0.0/16"}, "default")
    assert (pool.block_size, pool.block_count, pool.block_addresses) == (26, 1024, 64)
    assert pool.block_at(0) == netaddr.IPNetwork("10.244.0.0/26")
    assert pool.block_at(13) == netaddr.IPNetwork("10.244.3.64/26")
    assert pool.block_at(1023) == netaddr.IPNetwork("10.244.255.192/26")


def test_blocks_from_wraps_around_and_visits_each_once():
    pool = parse_pool({"cidr": "10.0.0.0/24", "blockSize": 26})
    assert [str(b) for b in pool.blocks_from(3)] == [
        "10.0.0.192/26", "10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26"]


def test_ipv6_pool_is_computed_not_enumerated():
    pool = parse_pool({"cidr": "fd00:10:244::/48"})
    assert pool.block_size == 122
    assert pool.block_count == 2 ** 74
    last = netaddr.IPNetwork("fd00:10:244:ffff:ffff:ffff:ffff:ffc0/122")
    assert pool.block_at(2 ** 74 - 1) == last


def test_block_names_are_object_names():
    assert block_name(netaddr.IPNetwork("10.244.3.64/26")) == "10-244-3-64-26"
    assert block_name(netaddr.IPNetwork("fd00:10::40/122")) == "fd00-10--40-122"


def test_start_index_spreads_nodes_and_stays_in_range():
    pool = parse_pool({"cidr": "10.244.0.0/16"})
    starts = {start_index(f"node-{i}", pool) for i in range(50)}
    assert len(starts) > 40
    assert all(0 <= s < pool.block_count for s in starts)


@pytest.mark.parametrize(("spec", "words"), [
    ({}, "'cidr' is missing"),
    ({"cidr": "10.244.0.0/33"}, "not a valid CIDR"),
    ({"cidr": "banana"}, "not a valid CIDR"),
    ({"cidr": "10.244.0.0"}, "has no prefix length"),
    ({"cidr": "10.244.1.0/16"}, "did you mean 10.244.0.0/16"),
    ({"cidr": "10.244.0.0/24", "blockSize": 20}, "blockSize /20 is larger than the pool"),
    ({"cidr": "10.244.0.0/24", "blockSize": 33}, "longer than an IPv4 address"),
    ({"cidr": "10.244.0.0/16", "blockSize": "26"}, "must be a whole number"),
    ({"cidr": "10.244.0.0/16", "vxlanMode": "Sometimes"}, "vxlanMode 'Sometimes'"),
    ({"cidr": "10.244.0.0/16", "nodeSelector": ["a"]}, "nodeSelector"),
])
def test_bad_pools_say_what_is_wrong(spec, words):
    with pytest.raises(PoolError, match=words):
        parse_pool(spec, "p")


def test_node_selector_matches_labels():
    pool = Pool("p", netaddr.IPNetwork("10.0.0.0/16"), 26, node_selector={"zone": "a"})
    assert pool.selects({"zone": "a", "x": "y"})
    assert not pool.selects({"zone": "b"})
    assert not pool.selects({})
