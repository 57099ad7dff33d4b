"""The node agent's work: set the node up, then keep its routing level-triggered.

Start: find the underlay, register and annotate the node, claim a first block and
take the tunnel address from it, create or adopt weft.vxlan, reconcile once, and
only then say ready (CNI STATUS, /readyz, the CNI config file kubelet waits for).
Then: reconcile on every datastore change, on every deletion of one of weft's
kernel entries, and every `resync` seconds. A restarted agent adopts what the
kernel holds and changes only what differs; stopping it leaves everything up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from pyroute2 import IPRoute

from weft.agent import kernel_watch, leaks, nat, vxlan
from weft.agent.cni_server import Runner, default_runners
from weft.agent.config import AgentConfig
from weft.agent.dataplane import Dataplane, LinuxDataplane
from weft.agent.install import (
    KUBECONFIG_NAME,
    InstallError,
    conflist,
    install_conflist,
    kubeconfig_from_service_account,
)
from weft.agent.iptables import Applier, Iptables
from weft.agent.metrics import Metrics
from weft.agent.policy.counters import DeniedPackets
from weft.agent.policy.enforcer import Enforcer
from weft.agent.policy.model import EGRESS, INGRESS, Cluster
from weft.agent.policy.render import Rendered
from weft.agent.routes import (
    ANNOTATION_NODE_IP,
    ANNOTATION_VTEP_IP,
    ANNOTATION_VTEP_MAC,
    VXLAN_DEVICE,
    Desired,
    Local,
    desired,
    diff,
    peers_from_nodes,
)
from weft.agent.underlay import Underlay, discover
from weft.cni.dispatch import requested_version
from weft.cni.errors import NOT_AVAILABLE, CNIError
from weft.ipam.allocator import IPAM, TUNNEL_HANDLE, Block
from weft.ipam.datastore import AlreadyExists, Datastore, DatastoreError
from weft.ipam.pools import DEFAULT_POOL, pools_from_objects

log = logging.getLogger(__name__)

WATCHED = ("IPAMBlock", "Node", "IPPool")
TOKEN_REFRESH_SECONDS = 600.0


class NodeAgent:
    def __init__(self, config: AgentConfig, store: Datastore,
                 dataplane: Dataplane | None = None, iptables: Applier | None = None) -> None:
        self.config = config
        self.store = store
        self.ipr = IPRoute()
        self.dataplane = dataplane or LinuxDataplane(self.ipr)
        self.iptables = iptables or Iptables()
        self.metrics = Metrics()
        self.ipam = IPAM(store, config.state_dir, config.node_name)
        self.ready = False
        self.underlay: Underlay | None = None
        self.local: Local | None = None
        self._wake = threading.Event()
        self._applied_nat: dict | None = None
        self._published_tunnel: tuple[str, str] | None = None
        self._revision_at_start = ""
        # What the kernel holds of weft's after the last clean apply, and the count of
        # kernel deletions seen then: dumping 1,000 routes, neighbours and FDB entries
        # again on every change cost more than the change (full passes still dump).
        self._kernel_deletions = 0
        self._held: tuple[int, Desired] | None = None
        self.enforcer: Enforcer | None = None
        if config.network_policy:
            self.enforcer = Enforcer(store, self._pod_addresses, observe=self._observe_policy)
            self.metrics.registry.register(DeniedPackets(
                lambda: self.enforcer.rendered.pods if self.enforcer.rendered else {}))

    # -- start ------------------------------------------------------------------

    def start(self) -> None:
        # What the datastore held before the first reconcile: a change made while that
        # reconcile runs, before the watcher starts, still wakes the agent.
        self._revision_at_start = self.store.revision(WATCHED)
        self.underlay = discover(self.ipr, self.config.underlay_interface, self.config.node_ip)
        u = self.underlay
        self.local = Local(self.config.node_name, u.address, u.prefixlen, u.device)
        log.info("node %s: underlay %s %s/%d, MTU %d", self.config.node_name, u.device,
                 u.address, u.prefixlen, u.mtu)
        if self.config.datastore == "local":
            self._register_node()
        self._ensure_default_pool()
        self._ensure_tunnel()

    def _ensure_tunnel(self) -> None:
        """Create or adopt weft.vxlan, and publish its address and MAC when they change
        (a device someone deleted comes back with a new MAC that peers must learn)."""
        assert self.underlay is not None
        tunnel_ip = self._tunnel_address()
        offload = vxlan.checksum_offload(self.config.vxlan_checksum_offload)
        vtep_mac = vxlan.ensure(self.ipr, self.underlay, tunnel_ip, offload)
        if (tunnel_ip, vtep_mac) == self._published_tunnel:
            return
        self.store.annotate("Node", self.config.node_name, {
            ANNOTATION_NODE_IP: self.underlay.address, ANNOTATION_VTEP_IP: tunnel_ip,
            ANNOTATION_VTEP_MAC: vtep_mac})
        self._published_tunnel = (tunnel_ip, vtep_mac)
        log.info("tunnel %s: %s, %s", VXLAN_DEVICE, tunnel_ip, vtep_mac)

    def become_ready(self) -> None:
        """The first full reconcile is done: tell kubelet (config file) and probes."""
        if self.config.cni_conf_dir:
            assert self.underlay is not None
            if self.config.datastore == "kubernetes":
                where = {"kubeconfig": self.config.cni_kubeconfig or
                         str(Path(self.config.cni_conf_dir) / KUBECONFIG_NAME)}
            else:
                where = {"datastorePath": self.config.datastore_path}
            path = install_conflist(self.config.cni_conf_dir, conflist(
                self.underlay.mtu - vxlan.OVERHEAD, datastore=self.config.datastore,
                stateDir=self.config.state_dir, nodeName=self.config.node_name,
                socket=self.config.socket, networkPolicy=self.config.network_policy, **where))
            log.info("wrote %s", path)
        self.ready = True

    def _register_node(self) -> None:
        """With the local datastore the agent registers its node, as kubelet would."""
        if self.store.get("Node", self.config.node_name) is None:
            with contextlib.suppress(AlreadyExists):
                self.store.create({"apiVersion": "v1", "kind": "Node",
                                   "metadata": {"name": self.config.node_name}})

    def _ensure_default_pool(self) -> None:
        cidr = self.config.default_pool
        if cidr == "none" or self.store.list("IPPool"):
            return
        try:
            self.store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool",
                               "metadata": {"name": "default"},
                               "spec": {**DEFAULT_POOL, "cidr": cidr}})
            log.info("created the default IP pool %s", cidr)
        except AlreadyExists:
            pass

    def _tunnel_address(self) -> str:
        """From the node's own block, under a handle no pod can hold."""
        held = self.ipam.lookup(TUNNEL_HANDLE) or self.ipam.assign(TUNNEL_HANDLE)
        v4 = [a.address for a in held if ":" not in a.address]
        if not v4:
            raise RuntimeError("no IPv4 pool to take the VXLAN tunnel address from")
        return v4[0]

    # -- reconcile ----------------------------------------------------------------

    def reconcile(self, full: bool = False) -> list[str]:
        """Make routes, tunnel entries and NAT match the datastore; returns failures."""
        assert self.local is not None and self.underlay is not None
        started = time.monotonic()
        pool_objects = self.store.cached("IPPool")
        pools, problems = pools_from_objects(pool_objects)
        for problem in problems:
            log.warning("ignoring a broken IPPool: %s", problem)
        try:
            self.ipam.refresh_pools(pool_objects)  # the per-pod path reads this copy
        except CNIError as err:
            log.warning("could not refresh the node's copy of the pools: %s", err)
        blocks = self.store.cached("IPAMBlock")
        nodes = self.store.cached("Node")
        peers = peers_from_nodes(nodes)
        peers.pop(self.local.name, None)
        if not self._annotations_on(nodes):
            self._published_tunnel = None  # its Node was registered anew: publish again
        if full or vxlan.index(self.ipr) is None or self._published_tunnel is None:
            self._ensure_tunnel()
        want = desired(self.local, blocks, peers, pools)
        deletions, held = self._kernel_deletions, self._held
        fresh = full or held is None or held[0] != deletions
        change = diff(want, self.dataplane.current() if fresh else held[1])
        errors = self.dataplane.apply(change) if change else []
        self._held = None if errors else (deletions, want)
        if change:
            log.info("reconciled: +%d/-%d routes, +%d/-%d neighbours, +%d/-%d fdb",
                     len(change.add_routes), len(change.del_routes),
                     len(change.add_neighbours), len(change.del_neighbours),
                     len(change.add_fdb), len(change.del_fdb))
        rendered = nat.render(pools)
        if full or rendered != self._applied_nat:
            try:
                nat.apply(self.iptables, pools)
                self._applied_nat = rendered
            except Exception as err:  # reported, retried on the next pass
                errors.append(f"failed to apply NAT rules: {err}")
        own = self.ipam.blocks()
        errors += self._reassert_claims(blocks, own)
        if full:  # not on every change: the write is one, and would wake the next pass
            errors += self._publish_block_usage(blocks, own)
        for error in errors:
            log.error("%s", error)
        self._record(want, own, errors, time.monotonic() - started)
        return errors

    def _pod_addresses(self) -> dict[str, str]:
        """namespace/name -> IPv4 address of every pod IPAM holds an address for here."""
        return {f"{a.namespace or 'default'}/{a.pod}": a.address
                for b in self.ipam.blocks() for a in b.allocations.values()
                if a.is_pod and a.pod and ":" not in a.address}

    def _observe_policy(self, seconds: float, rendered: Rendered, cluster: Cluster) -> None:
        self.metrics.policy_sync_seconds.observe(seconds)
        self.metrics.policies.set(len(cluster.policies))
        for direction in (INGRESS, EGRESS):
            self.metrics.policy_selected_pods.labels(direction).set(
                sum(1 for (_, d), g in rendered.grants.items() if d == direction and g is not None))

    def _annotations_on(self, nodes: list[dict]) -> bool:
        """Whether this node's Node carries what the agent last published (a Node that
        kubelet registers again after a deletion comes without weft's annotations, and
        no peer would route to this node's blocks); True while the Node is missing."""
        mine = next((n for n in nodes if n["metadata"]["name"] == self.local.name), None)
        if mine is None or self._published_tunnel is None:
            return True
        have = mine["metadata"].get("annotations") or {}
        tunnel_ip, vtep_mac = self._published_tunnel
        return (have.get(ANNOTATION_NODE_IP), have.get(ANNOTATION_VTEP_IP),
                have.get(ANNOTATION_VTEP_MAC)) == (self.local.node_ip, tunnel_ip, vtep_mac)

    def _reassert_claims(self, blocks: list[dict], own: list[Block]) -> list[str]:
        """Blocks this node allocates from must stay claimed in the datastore: when its
        Node is deleted and registered again, the garbage collector deletes them, and
        another node could claim one and hand out the same addresses. Claim them again
        at once; one another node took meanwhile is an error naming its pods."""
        owners = {(b.get("spec") or {}).get("cidr"): (b.get("spec") or {}).get("node")
                  for b in blocks}
        errors = []
        for block in own:
            if owners.get(block.cidr) == self.local.name:
                continue
            try:
                outcome = self.ipam.reclaim(block) if owners.get(block.cidr) is None else ""
                if outcome == "claimed":
                    log.warning("claimed block %s again: its IPAMBlock was gone (was Node %s "
                                "deleted and registered again?)", block.cidr, self.local.name)
                if outcome in ("claimed", "no node"):  # no Node: wait for kubelet's
                    continue
                current = self.store.get("IPAMBlock", block.name) or {}
            except (CNIError, DatastoreError) as err:
                errors.append(f"failed to claim block {block.cidr} again: {err}")
                continue
            owner = (current.get("spec") or {}).get("node")
            if owner == self.local.name:
                continue  # claimed after the list this pass read
            pods = sorted(f"{a.namespace}/{a.pod}" for a in block.allocations.values()
                          if a.is_pod)
            errors.append(f"block {block.cidr} of this node is claimed by node "
                          f"{owner or 'another node'}: addresses of "
                          f"{', '.join(pods) or 'no pod'} may be handed out twice; "
                          "delete those pods")
        return errors

    def _publish_block_usage(self, blocks: list[dict], own: list[Block]) -> list[str]:
        """status.allocated of this node's blocks, written only when it changed.

        Pods are allocated on the node with no API call; the count reaches the
        API at the next full resync, for `weft ipam show` and `kubectl get`.
        Publishing it on every pass kept the agent reconciling five times a
        second while pods came and went: each write is a datastore change.
        """
        used = {b.cidr: len(b.allocations) for b in own}
        errors = []
        for block in blocks:
            spec, status = block.get("spec") or {}, block.get("status") or {}
            count = used.get(spec.get("cidr"))
            if spec.get("node") != self.local.name or count is None or \
                    status.get("allocated") == count:
                continue
            try:
                self.store.set_status("IPAMBlock", block["metadata"]["name"],
                                      {"allocated": count})
            except DatastoreError as err:
                errors.append(f"failed to update the usage of block {spec.get('cidr')}: {err}")
        return errors

    def _record(self, want, own: list[Block], errors: list[str], seconds: float) -> None:
        self.metrics.reconcile_seconds.observe(seconds)
        self.metrics.reconcile_errors.inc(len(errors))
        for kind in ("blackhole", "direct", "vxlan"):
            self.metrics.routes.labels(kind).set(
                sum(1 for r in want.routes.values() if r.kind == kind))
        self.metrics.blocks.set(len(own))
        self.metrics.allocations.set(sum(len(b.allocations) for b in own))

    # -- watching -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Reconcile on changes and every resync interval until `stop` is set."""
        threading.Thread(target=self._watch_store, args=(stop,), name="watch-store",
                         daemon=True).start()
        # Someone deleted one of weft's routes, neighbours or its tunnel: put it back.
        threading.Thread(target=kernel_watch.watch, args=(self._kernel_deletion,),
                         name="watch-kernel", daemon=True).start()
        if self.enforcer is not None:
            threading.Thread(target=self.enforcer.run, args=(stop, self.config.resync_seconds * 6),
                             name="network-policy", daemon=True).start()
        last_full = last_leak_check = time.monotonic()
        last_token = 0.0
        while not stop.is_set():
            if self.config.cni_kubeconfig and \
                    time.monotonic() - last_token >= TOKEN_REFRESH_SECONDS:
                last_token = time.monotonic()
                self._refresh_cni_kubeconfig()
            self._wake.wait(timeout=min(self.config.resync_seconds,
                                        self.config.leak_check_seconds))
            self._wake.clear()
            if stop.is_set():
                break
            full = time.monotonic() - last_full >= self.config.resync_seconds
            self.metrics.reconciles.labels("resync" if full else "change").inc()
            try:
                self.reconcile(full=full)
            except Exception:
                log.exception("reconcile failed; retrying at the next change or resync")
            if full:
                last_full = time.monotonic()
            if time.monotonic() - last_leak_check >= self.config.leak_check_seconds:
                last_leak_check = time.monotonic()
                try:
                    self.check_leaks()
                except Exception:
                    log.exception("leak check failed; trying again later")

    def wake(self) -> None:
        self._wake.set()

    def _kernel_deletion(self) -> None:
        self._kernel_deletions += 1
        self.wake()

    def _watch_store(self, stop: threading.Event) -> None:
        seen = self._revision_at_start
        while not stop.is_set():
            try:
                now = self.store.wait(WATCHED, seen, timeout=1.0)
            except Exception:
                log.exception("failed to watch the datastore")
                stop.wait(1.0)
                continue
            if now != seen:
                seen = now
                self.wake()

    def _refresh_cni_kubeconfig(self) -> None:
        """Service account tokens expire; the host's CNI binary needs a live one."""
        try:
            kubeconfig_from_service_account(Path(self.config.cni_kubeconfig))
        except InstallError as err:
            log.warning("could not refresh %s: %s", self.config.cni_kubeconfig, err)

    def check_leaks(self) -> list[str]:
        """Release addresses whose pod is gone from both the API and this node."""
        pods = {((p.get("metadata") or {}).get("namespace", ""),
                 (p.get("metadata") or {}).get("name", ""))
                for p in self.store.list("Pod", node=self.config.node_name)}
        links = {link.get("ifname") for link in self.ipr.get_links()}
        allocations = [a for b in self.ipam.blocks() for a in b.allocations.values()]
        gone = {a.address for a in leaks.leaked(allocations, pods, links)}
        if not gone:
            return []
        freed = self.ipam.gc(lambda alloc: alloc.address not in gone)
        return [a.address for a in freed]

    def cni_runners(self) -> Mapping[str, Runner]:
        """The CNI runners, with STATUS answering 'not available' until ready."""
        def gated(run: Runner) -> Runner:
            def runner(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
                if env.get("CNI_COMMAND") == "STATUS" and not self.ready:
                    error = CNIError(NOT_AVAILABLE, "the weft agent is starting",
                                     "its first reconcile of routes is not done yet")
                    return 1, error.to_json(requested_version(stdin))
                return run(env, stdin)
            return runner
        admit = self.enforcer.admit if self.enforcer is not None else None
        return {name: gated(run) for name, run in default_runners(admit).items()}
