"""The proxy's model and rules, and its syncs against the fake iptables."""

import pytest

from weft.agent.iptables import FakeIptables
from weft.agent.proxy import render
from weft.agent.proxy.model import Endpoint, ServicePort, service_ports
from weft.agent.proxy.proxier import Proxier, owned
from weft.ipam.local import LocalStore


def service(name="web", ports=None, **spec):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": ports or [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}], **spec}}


def slice_(name="web", endpoints=(("10.244.0.2", "n1", True),), port=8080, port_name="http",
           protocol="TCP"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
                          for ip, node, ready in endpoints]}


def test_named_target_ports_resolve_through_slices_and_only_ready_endpoints_count():
    eps = (("10.244.0.2", "n1", True), ("10.244.0.3", "n2", False), ("10.244.1.2", "n2", True))
    (sp,) = service_ports([service()], [slice_(endpoints=eps)])
    assert sp.key == "default/web:http"
    assert sp.endpoints == (Endpoint("10.244.0.2", 8080, "n1"), Endpoint("10.244.1.2", 8080,
                                                                         "n2"))


def test_headless_and_external_name_services_are_not_proxied():
    assert service_ports([service(clusterIP="None"), service("x", type="ExternalName")], []) == []


@pytest.mark.parametrize("label", ["service.kubernetes.io/service-proxy-name",
                                   "service.kubernetes.io/headless"])
def test_services_labelled_for_another_proxy_or_headless_are_left_alone(label):
    labelled = service("other")
    labelled["metadata"]["labels"] = {label: "someone-else"}
    (sp,) = service_ports([labelled, service()], [slice_(), slice_("other")])
    assert sp.name == "web"


def test_probabilities_chain_names_and_dnat():
    eps = tuple(Endpoint(f"10.244.0.{i}", 8080, "n1") for i in range(2, 5))
    sp = ServicePort("default", "web", "http", "TCP", "10.96.0.20", 80, endpoints=eps)
    rules = render.render_port(sp, "n1", "10.244.0.0/16")
    (svc,) = [c for _, c in rules.chains if c.startswith("WEFT-SVC-")]
    seps = sorted(c for _, c in rules.chains if c.startswith("WEFT-SEP-"))
    assert all(len(c) <= 28 for _, c in rules.chains)
    svc_rules = rules.chains[("nat", svc)]
    assert "--probability 0.33333333333" in svc_rules[1]
    assert "--probability 0.50000000000" in svc_rules[2]
    assert "statistic" not in svc_rules[3]
    assert "! -s 10.244.0.0/16" in svc_rules[0] and "-j WEFT-MARK-MASQ" in svc_rules[0]
    dnat = [r for c in seps for r in rules.chains[("nat", c)] if "DNAT" in r]
    assert sorted(r.split()[-1] for r in dnat) == [f"10.244.0.{i}:8080" for i in range(2, 5)]
    hairpin = [r for c in seps for r in rules.chains[("nat", c)] if "MARK-MASQ" in r]
    assert len(hairpin) == 3
    assert rules.services[0].startswith("-A WEFT-SERVICES -d 10.96.0.20/32 -p tcp -m tcp "
                                        "--dport 80")


def test_affinity_node_ports_and_external_ips():
    sp = ServicePort("default", "web", "", "UDP", "10.96.0.20", 53, node_port=30053,
                     external_ips=("192.0.2.9",), affinity_seconds=600,
                     endpoints=(Endpoint("10.244.0.2", 53),))
    rules = render.render_port(sp, "n1", "10.244.0.0/16")
    flat = [r for rs in rules.chains.values() for r in rs]
    assert any("--rcheck --seconds 600 --reap" in r for r in flat)
    assert any("-m recent --name" in r and "--set" in r and "DNAT" in r for r in flat)
    assert any("--dport 30053" in r for r in rules.nodeports)
    assert any("-d 192.0.2.9/32" in r for r in rules.services)
    (ext,) = [c for _, c in rules.chains if c.startswith("WEFT-EXT-")]
    assert rules.chains[("nat", ext)][0].endswith("-j WEFT-MARK-MASQ")


def test_no_endpoints_and_no_local_endpoints_are_rejected():
    empty = ServicePort("default", "web", "", "TCP", "10.96.0.20", 80, node_port=30080)
    rules = render.render_port(empty, "n1", "10.244.0.0/16")
    assert rules.chains == {} and rules.services == []
    assert "has no endpoints" in rules.rejects[0] and "REJECT" in rules.rejects[0]
    assert "--dport 30080" in rules.external_rejects[0]
    remote_only = ServicePort("default", "web", "", "TCP", "10.96.0.20", 80, local_only=True,
                              endpoints=(Endpoint("10.244.1.2", 80, "n2"),))
    local = render.render_port(remote_only, "n1", "10.244.0.0/16")
    assert "has no local endpoints" in local.rejects[0]
    assert render.render_port(remote_only, "n2", "10.244.0.0/16").chains


def proxier(tmp_path):
    store = LocalStore(tmp_path)
    return store, Proxier(store, "n1", "10.244.0.0/16", FakeIptables(), min_interval=0,
                          conntrack_cleanup=False)


def test_first_sync_writes_everything_later_syncs_only_what_changed(tmp_path):
    store, proxy = proxier(tmp_path)
    store.apply(service())
    store.apply(slice_(endpoints=(("10.244.0.2", "n1", True), ("10.244.0.3", "n1", True))))
    first = proxy.sync()
    assert first.full and first.written >= 6  # 4 fixed chains, SVC, 2 SEP (+ filter)
    assert proxy.sync().written == 0

    store.apply(slice_(endpoints=(("10.244.0.2", "n1", True), ("10.244.0.4", "n1", True))))
    change = proxy.sync()
    assert not change.full
    assert change.written == 2 and change.deleted == 1  # SVC and the new SEP; the old SEP

    store.delete("Service", "web", "default")
    gone = proxy.sync()
    nat = proxy.iptables.chains("nat")
    assert not [c for c in nat if c.startswith(("WEFT-SVC-", "WEFT-SEP-"))]
    assert gone.deleted == 3


def test_a_failed_sync_makes_the_next_one_full(tmp_path):
    store, proxy = proxier(tmp_path)
    store.apply(service())
    proxy.sync()

    class Broken(FakeIptables):
        def restore(self, *args, **kwargs):
            raise RuntimeError("iptables-restore failed")

    good = proxy.iptables
    proxy.iptables = Broken()
    store.apply(slice_())
    with pytest.raises(RuntimeError):
        proxy.sync()
    proxy.iptables = good
    assert proxy.sync().full


def test_only_weft_chains_are_owned():
    assert owned("WEFT-SVC-ABC") and owned("WEFT-SERVICES") and owned("WEFT-MARK-MASQ")
    assert not owned("WEFT-POSTROUTING") and not owned("KUBE-SERVICES")
    assert not owned("DOCKER")


def test_a_failed_conntrack_cleanup_does_not_fail_the_sync(tmp_path, monkeypatch, caplog):
    from weft.agent.proxy import conntrack

    store = LocalStore(tmp_path)
    proxy = Proxier(store, "n1", "10.244.0.0/16", FakeIptables(), min_interval=0)
    store.apply(service(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]))
    store.apply(slice_(port=53, port_name="dns", protocol="UDP"))

    def broken(*_args):
        raise PermissionError("conntrack table unreadable")
    monkeypatch.setattr(conntrack, "reconcile", broken)
    result = proxy.sync()
    assert result.full and result.written > 0
    assert "could not delete stale UDP conntrack entries" in caplog.text
    assert proxy.sync().full is False  # the rules counted as applied


def test_internal_traffic_policy_local_narrows_only_the_cluster_ip():
    """As kube-proxy does: node ports keep every endpoint (externalTrafficPolicy)."""
    sp = ServicePort("default", "web", "", "TCP", "10.96.0.20", 80, node_port=30080,
                     local_only=True, endpoints=(Endpoint("10.244.0.2", 80, "n1"),
                                                 Endpoint("10.244.1.2", 80, "n2")))
    here = render.render_port(sp, "n1", "10.244.0.0/16")
    (cluster_jump,) = here.services
    svl = cluster_jump.split()[-1]
    assert svl.startswith("WEFT-SVL-")
    dnat = {c: [r.split()[-1] for r in rules if "DNAT" in r] for (_, c), rules in
            here.chains.items() if c.startswith("WEFT-SEP-")}
    picked = [r.split()[-1] for r in here.chains[("nat", svl)] if "WEFT-SEP-" in r]
    assert [dnat[c] for c in picked] == [["10.244.0.2:80"]]
    (ext,) = [c for _, c in here.chains if c.startswith("WEFT-EXT-")]
    svc = here.chains[("nat", ext)][-1].split()[-1]
    assert sorted(dnat[r.split()[-1]][0] for r in here.chains[("nat", svc)]) == [
        "10.244.0.2:80", "10.244.1.2:80"]
    elsewhere = render.render_port(sp, "n3", "10.244.0.0/16")
    assert "has no local endpoints" in elsewhere.rejects[0] and elsewhere.services == []
    assert elsewhere.nodeports and not elsewhere.external_rejects
