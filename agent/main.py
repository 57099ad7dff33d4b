"""`weft agent`: the node daemon.

It registers its node, makes sure a pool exists, and serves the CNI socket so
that the per-pod executable stays a thin, fast shim.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from weft.agent.cni_server import CNIServer
from weft.agent.config import AgentConfig
from weft.ipam.datastore import AlreadyExists, Datastore
from weft.ipam.plugin import datastore
from weft.ipam.pools import DEFAULT_POOL

log = logging.getLogger(__name__)


def ensure_node(store: Datastore, node: str) -> None:
    """Register the node, as kubelet does in a cluster (local datastore only)."""
    if store.get("Node", node) is None:
        with contextlib.suppress(AlreadyExists):
            store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})


def ensure_default_pool(store: Datastore, cidr: str) -> None:
    """Create the default pool when the cluster has none, as Calico's node does."""
    if cidr == "none" or store.list("IPPool"):
        return
    spec = {**DEFAULT_POOL, "cidr": cidr}
    try:
        store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool",
                      "metadata": {"name": "default"}, "spec": spec})
        log.info("created the default IP pool %s", cidr)
    except AlreadyExists:
        pass


def run(config: AgentConfig) -> int:
    store = datastore(config.datastore, config.datastore_path)
    if config.datastore == "local":
        ensure_node(store, config.node_name)
    ensure_default_pool(store, config.default_pool)
    server = CNIServer(config.socket)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("weft agent ready on node %s", config.node_name)
    stop.wait()
    log.info("stopping: pods keep their network; routes stay in place")
    server.stop()
    return 0
