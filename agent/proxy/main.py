"""`weft proxy`, `weft proxy show` and `weft proxy cleanup`."""

from __future__ import annotations

import logging
import signal
import threading
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram

from weft.agent import metrics
from weft.agent.iptables import Iptables
from weft.agent.proxy import proxier, render
from weft.agent.proxy.model import service_ports
from weft.ipam.datastore import Datastore, DatastoreError
from weft.ipam.pools import DEFAULT_POOL, pools_from_objects
from weft.table import render as table

log = logging.getLogger(__name__)

WATCHED = ("Service", "EndpointSlice")


class ProxyMetrics:
    """Sync time and rule counts, in the proxy's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sync_seconds = Histogram("weft_proxy_sync_duration_seconds", "Time of one sync",
                                      ["kind"], registry=self.registry)
        self.rules = Gauge("weft_proxy_rules", "Rules the proxy holds", ["table"],
                           registry=self.registry)
        self.service_ports = Gauge("weft_proxy_service_ports", "Service ports proxied",
                                   registry=self.registry)


def cluster_cidr(store: Datastore, given: str) -> str:
    """The pods' CIDR: traffic from outside it to a cluster IP is masqueraded."""
    if given:
        return given
    try:
        pools, _ = pools_from_objects(store.list("IPPool"))
    except DatastoreError as err:
        log.warning("could not read the pools (%s); assuming %s", err, DEFAULT_POOL["cidr"])
        return DEFAULT_POOL["cidr"]
    v4 = [p for p in pools if p.family == 4]
    return str(v4[0].cidr) if v4 else DEFAULT_POOL["cidr"]


def run(store: Datastore, node: str, given_cidr: str, health_address: str,
        min_interval: float, resync_seconds: float) -> int:
    proxy = proxier.Proxier(store, node, cluster_cidr(store, given_cidr), Iptables(),
                            min_interval=min_interval)
    stats = ProxyMetrics()
    ready = threading.Event()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    http = metrics.serve(health_address, stats.registry, ready.is_set)
    seen, last_full = None, 0.0
    while not stop.is_set():
        now = store.revision(WATCHED)
        due = time.monotonic() - last_full >= resync_seconds
        if now != seen or due:
            if due:
                proxy.invalidate()  # re-check every chain, repairing hand edits
            try:
                result = proxy.sync()
                seen = now
                if due:
                    last_full = time.monotonic()
                stats.sync_seconds.labels("full" if result.full else "partial").observe(
                    result.seconds)
                stats.service_ports.set(result.service_ports)
                stats.rules.labels("all").set(result.rules)
                ready.set()
            except Exception:
                log.exception("sync failed; the next sync writes every chain")
        stop.wait(0.2)
    http.shutdown()
    return 0


def show(store: Datastore, node: str, given_cidr: str) -> str:
    ports = service_ports(store.list("Service"), store.list("EndpointSlice"))
    cidr = cluster_cidr(store, given_cidr)
    rows = []
    for sp in sorted(ports, key=lambda p: p.key):
        rules = render.render_port(sp, node, cidr)
        count = (sum(len(r) for r in rules.chains.values()) + len(rules.services)
                 + len(rules.nodeports) + len(rules.rejects) + len(rules.external_rejects))
        usable = sp.usable_endpoints(node)
        endpoints = ", ".join(f"{e.ip}:{e.port}" for e in usable) or "(none: REJECT)"
        frontend = f"{sp.cluster_ip}:{sp.port}" + (f" node:{sp.node_port}" if sp.node_port
                                                   else "")
        notes = ", ".join(n for n in (
            f"affinity {sp.affinity_seconds}s" if sp.affinity_seconds else "",
            "local only" if sp.local_only else "",
            f"external {','.join(sp.external_ips)}" if sp.external_ips else "") if n)
        rows.append((sp.key, sp.protocol, frontend, endpoints, count, notes or "-"))
    return table(("service port", "proto", "frontend", "endpoints", "rules", "notes"), rows)


def cleanup() -> int:
    proxier.remove(Iptables())
    print("removed the proxy's chains and jumps")
    return 0
