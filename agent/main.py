"""`weft agent` and `weft agent cleanup`."""

from __future__ import annotations

import logging
import shutil
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
from weft.agent.policy import admission, enforcer
from weft.agent.policy.admission import AdmissionServer
from weft.agent.policy.render import FAMILY, TABLE
from weft.agent.proxy import proxier
from weft.agent.routes import VXLAN_DEVICE
from weft.ipam.plugin import datastore

log = logging.getLogger(__name__)


def run(config: AgentConfig) -> int:
    if config.network_policy and shutil.which("nft") is None:
        log.error("NetworkPolicy needs nft, which is not installed: install nftables "
                  "(Debian: apt-get install nftables), or run with --network-policy off")
        return 1
    store = datastore(config.datastore, config.datastore_location)
    agent = NodeAgent(config, store)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        agent.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    agent.start()
    policy_socket = ""
    if agent.enforcer is not None:
        try:  # the table exists before any pod is added
            agent.enforcer.sync(full=True)
        except Exception as err:  # pods are refused until a sync succeeds: fail closed
            log.error("NetworkPolicy: the first sync failed (%s); pods are refused until "
                      "one succeeds", err)
        policy_socket = admission.socket_path(config.socket)
        AdmissionServer(policy_socket, agent.enforcer.admit).start()
    server = CNIServer(config.socket, agent.cni_runners(), agent.metrics.observe_cni)
    server.start()
    http = metrics.serve(config.health_address, agent.metrics.registry, lambda: agent.ready)
    errors = agent.reconcile(full=True)
    if errors:
        log.warning("first reconcile had %d failures; retrying", len(errors))
    agent.become_ready()
    workers = CNIWorkers(server.socket, config.cni_workers, agent.metrics.observe_cni,
                         policy_socket)
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
    (the service proxy's too: stop it first), its nftables table, and the CNI config if
    it wrote one."""
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
    if enforcer.remove():
        print(f"removed the nftables table {FAMILY} {TABLE}")
    if config.cni_conf_dir:
        path = Path(config.cni_conf_dir) / CONFLIST_NAME
        if path.exists():
            path.unlink()
            print(f"removed {path}")
    return 0
