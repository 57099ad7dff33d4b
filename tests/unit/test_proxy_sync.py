"""Partial syncs against the fake iptables: they must leave what a full sync would."""

import pytest

from weft.agent.iptables import FakeIptables
from weft.agent.proxy.model import SERVICE_NAME_LABEL
from weft.agent.proxy.proxier import Proxier
from weft.ipam.local import LocalStore

from .test_proxy_render import service, slice_

PROXY_NAME = "service.kubernetes.io/service-proxy-name"
WEB_EPS = (("10.244.0.2", "n1", True), ("10.244.0.3", "n2", True))


def proxier(store) -> Proxier:
    return Proxier(store, "n1", "10.244.0.0/16", FakeIptables(), min_interval=0,
                   conntrack_cleanup=False)


def full_sync_of(store) -> dict:
    fresh = proxier(store)
    assert fresh.sync().full
    return fresh.iptables.tables


def labelled(obj, label, value):
    obj["metadata"]["labels"] = {label: value}
    return obj


def test_after_each_change_a_partial_sync_leaves_what_a_full_sync_would(tmp_path):
    store = LocalStore(tmp_path)
    dns = [{"name": "dns", "port": 53, "protocol": "UDP"}]
    steps = [
        lambda: [store.apply(service("web")), store.apply(slice_("web", WEB_EPS)),
                 store.apply(service("dns", ports=dns, clusterIP="10.96.0.10",
                                     sessionAffinity="ClientIP")),
                 store.apply(slice_("dns", port=53, port_name="dns", protocol="UDP")),
                 store.apply(service("np", clusterIP="10.96.0.30", type="NodePort",
                                     externalIPs=["192.0.2.9"], ports=[
                                         {"name": "http", "port": 80, "nodePort": 30080}])),
                 store.apply(slice_("np")),
                 store.apply(service("loc", clusterIP="10.96.0.40",
                                     internalTrafficPolicy="Local")),
                 store.apply(slice_("loc", (("10.244.1.5", "n2", True),)))],
        lambda: store.apply(slice_("web", (("10.244.0.2", "n1", True),
                                           ("10.244.0.9", "n2", True)))),
        lambda: store.apply(slice_("dns", (), port=53, port_name="dns", protocol="UDP")),
        # Named first: its lines go ahead of every other Service's in the shared chains.
        lambda: [store.apply(service("aaa", clusterIP="10.96.0.50")),
                 store.apply(slice_("aaa"))],
        lambda: store.apply(service("np", clusterIP="10.96.0.30", type="NodePort", ports=[
            {"name": "http", "port": 8080, "nodePort": 30080},
            {"name": "alt", "port": 81, "protocol": "UDP", "nodePort": 30081}])),
        lambda: store.apply(labelled(slice_("web", WEB_EPS), SERVICE_NAME_LABEL, "aaa")),
        lambda: store.delete("Service", "np", "default"),
        lambda: store.apply(labelled(service("loc", clusterIP="10.96.0.40"), PROXY_NAME,
                                     "another")),
        lambda: [store.delete("EndpointSlice", "web-x", "default"),
                 store.apply(service("np", clusterIP="10.96.0.30"))],
    ]
    proxy = proxier(store)
    for number, step in enumerate(steps):
        step()
        result = proxy.sync()
        assert result.full == (number == 0)
        assert proxy.iptables.tables == full_sync_of(store), f"after step {number}"


def test_services_labelled_for_another_proxy_get_no_chains(tmp_path):
    store = LocalStore(tmp_path)
    store.apply(labelled(service("other", clusterIP="10.96.0.21"), PROXY_NAME, "another"))
    store.apply(slice_("other"))
    proxy = proxier(store)
    proxy.sync()
    assert not [r for rules in proxy.iptables.chains("nat").values() for r in rules
                if "default/other" in r]


class Listed:
    """A datastore that lists its objects in the order given, as an API server may."""

    def __init__(self, services, slices):
        self.objects = {"Service": services, "EndpointSlice": slices}

    def list(self, kind, namespace="", node=""):
        return self.objects[kind]


def test_the_order_the_datastore_lists_services_in_changes_nothing_written():
    services = [service(name, clusterIP=f"10.96.0.{i}")
                for i, name in enumerate(("a", "b", "c"), start=1)]
    for obj in services:
        obj["metadata"]["resourceVersion"] = "1"
    store = Listed(services, [slice_(name) for name in ("a", "b", "c")])
    proxy = proxier(store)
    proxy.sync()
    store.objects["Service"] = services[::-1]
    assert proxy.sync().written == 0
    assert proxy.iptables.tables == full_sync_of(store)


def test_a_service_that_fails_to_parse_is_parsed_again_at_the_next_sync(tmp_path):
    store = LocalStore(tmp_path)
    store.apply(service(ports=[{"name": "http", "port": "eighty", "protocol": "TCP"}]))
    store.apply(slice_())
    proxy = proxier(store)
    with pytest.raises(ValueError):
        proxy.sync()
    with pytest.raises(ValueError):
        proxy.sync()
    store.apply(service())
    proxy.sync()
    assert any(c.startswith("WEFT-SVC-") for c in proxy.iptables.chains("nat"))
    assert proxy.iptables.tables == full_sync_of(store)
