"""`weft agent` and `weft agent cleanup`."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from pyroute2 import IPRoute

from weft.agent import metrics, nat, vxlan
from weft.agent.cni_server import CNIServer
from weft.agent.cni_workers import CNIWorkers
from weft.agent.config import AgentConfig
from weft.agent.dataplane import PROTO
from weft.agent.install import CONFLIST_NAME
from weft.agent.iptables import Iptables
from weft.agent.node import NodeAgent
from weft.agent.proxy import proxier
from weft.agent.routes import VXLAN_DEVICE
from weft.ipam.plugin import datastore

log = logging.getLogger(__name__)


def run(config: AgentConfig) -> int:
    store = datastore(config.datastore, config.datastore_location)
    agent = NodeAgent(config, store)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        agent.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    agent.start()
    server = CNIServer(config.socket, agent.cni_runners(), agent.metrics.observe_cni)
    server.start()
    http = metrics.serve(config.health_address, agent.metrics.registry, lambda: agent.ready)
    errors = agent.reconcile(full=True)
    if errors:
        log.warning("first reconcile had %d failures; retrying", len(errors))
    agent.become_ready()
    workers = CNIWorkers(server.socket, config.cni_workers, agent.metrics.observe_cni)
    workers.start()
    log.info("weft agent ready on node %s", config.node_name)
    agent.run(stop)
    log.info("stopping: pods keep their network; routes stay in place")
    workers.stop()
    server.stop()
    http.shutdown()
    return 0


def cleanup(config: AgentConfig) -> int:
    """Remove what weft made on this node: routes, the tunnel, every weft iptables chain
    (the service proxy's too: stop it first), and the CNI config if it wrote one."""
    with IPRoute() as ipr:
        routes = ipr.get_routes(proto=PROTO, table=254)
        for route in routes:
            ipr.route("del", dst=f"{route.get('dst')}/{route['dst_len']}", proto=PROTO,
                      table=254, type=route["type"], family=route["family"])
        print(f"removed {len(routes)} routes of protocol {PROTO}")
        if vxlan.remove(ipr):
            print(f"removed {VXLAN_DEVICE}")
    iptables = Iptables()
    proxier.remove(iptables)  # the service proxy's chains come out first: they use the mark
    nat.remove(iptables)
    print(f"removed the service proxy's chains, {nat.NAT_CHAIN} and {nat.FORWARD_CHAIN}")
    if config.cni_conf_dir:
        path = Path(config.cni_conf_dir) / CONFLIST_NAME
        if path.exists():
            path.unlink()
            print(f"removed {path}")
    return 0
