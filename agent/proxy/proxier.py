"""The proxy's sync loop: render, then apply once, and only what changed.

As kube-proxy does it: each service port renders on its own and is cached by its
inputs, so a sync re-renders only service ports that changed; the first sync (and
the one after any failure) writes every chain and deletes leftover WEFT- chains of
an earlier run; later syncs write only chains whose rules changed and delete the
chains no longer needed, in one iptables-restore per table. Syncs are batched: at
most one per `min_interval`. Stale UDP conntrack entries are reconciled after the
new rules are in place.

Lock rule: `sync` is called from one thread only (the proxy's loop).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from weft.agent.iptables import Applier
from weft.agent.proxy import conntrack, render
from weft.agent.proxy.model import ServicePort, group_slices, ports_of
from weft.ipam.datastore import Datastore

log = logging.getLogger(__name__)

OWNED_PREFIXES = ("WEFT-SVC-", "WEFT-SEP-", "WEFT-EXT-")
OWNED_FIXED = (render.SERVICES, render.NODEPORTS, render.MARK_MASQ, render.EXTERNAL_SERVICES)


class ChangeTracker:
    """Re-reads only Services whose object, or one of whose slices, changed.

    Keyed by resourceVersions, as kube-proxy's change trackers are: at 10,000
    Services, parsing them all again for one endpoint change would dominate.
    Objects without a resourceVersion are always read.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[tuple, list[ServicePort]]] = {}

    def ports(self, services: list[dict], slices: list[dict]) -> list[ServicePort]:
        by_service = group_slices(slices)
        seen: dict[tuple[str, str], tuple[tuple, list[ServicePort]]] = {}
        out: list[ServicePort] = []
        for svc in services:
            meta = svc.get("metadata") or {}
            key = (meta.get("namespace") or "default", meta.get("name", ""))
            mine = by_service.get(key, [])
            versions = (meta.get("resourceVersion"),
                        *sorted(str((s.get("metadata") or {}).get("resourceVersion"))
                                for s in mine))
            cached = self._seen.get(key)
            if cached is not None and cached[0] == versions and versions[0] is not None:
                ports = cached[1]
            else:
                ports = ports_of(svc, mine)
            seen[key] = (versions, ports)
            out += ports
        self._seen = seen
        return out


@dataclass
class SyncResult:
    full: bool
    written: int
    deleted: int
    rules: int
    seconds: float


@dataclass
class Proxier:
    store: Datastore
    node: str
    cluster_cidr: str
    iptables: Applier
    min_interval: float = 1.0
    conntrack_cleanup: bool = True
    _applied: dict[str, dict[str, list[str]]] | None = None
    _cache: dict[ServicePort, render.PortRules] = field(default_factory=dict)
    _ports: list[ServicePort] = field(default_factory=list)
    _last_sync: float = 0.0
    _tracker: ChangeTracker = field(default_factory=lambda: ChangeTracker())

    def sync(self) -> SyncResult:
        """Bring the proxy's chains in line with the datastore's Services."""
        wait = self._last_sync + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # batch: changes that arrive meanwhile go in this sync
        started = time.monotonic()
        ports = self._tracker.ports(self.store.list("Service"), self.store.list("EndpointSlice"))
        parts = []
        cache: dict[ServicePort, render.PortRules] = {}
        for sp in ports:
            part = self._cache.get(sp) or render.render_port(sp, self.node, self.cluster_cidr)
            cache[sp] = part
            parts.append(part)
        wanted = render.assemble(parts)
        full = self._applied is None
        try:
            written, deleted = self._apply(wanted, full)
        except Exception:
            self._applied = None  # the next sync writes everything
            raise
        previous = conntrack.frontends(self._ports, self.node)
        self._cache, self._ports, self._applied = cache, ports, wanted
        if self.conntrack_cleanup:
            # The rules are in place whatever happens here: a failed cleanup is logged
            # and done again at the next sync, and does not make this sync a failure
            # (which would keep the proxy unready with every service programmed).
            try:
                conntrack.reconcile(ports, self.node, set(previous))
            except Exception as err:  # netlink errors, a conntrack table we may not read
                log.warning("could not delete stale UDP conntrack entries: %s", err)
        self._last_sync = time.monotonic()
        result = SyncResult(full, written, deleted, sum(len(r) for t in wanted.values()
                                                        for r in t.values()),
                            self._last_sync - started)
        log.info("synced %d service ports: %s, %d chains written, %d deleted, %.3fs",
                 len(ports), "full" if full else "partial", written, deleted, result.seconds)
        return result

    def _apply(self, wanted: dict[str, dict[str, list[str]]], full: bool) -> tuple[int, int]:
        written = deleted = 0
        for table, chains in wanted.items():
            jumps: list = []
            if full:
                # One read of the table finds leftovers of an earlier run and the jumps
                # that are missing; both are fixed in the same restore.
                existing = self.iptables.chains(table)
                changed = dict(chains)
                gone = [c for c in existing if owned(c) and c not in chains]
                jumps = [j for j in render.JUMPS if j.table == table
                         and not j.found_in(existing.get(j.chain, []))]
            else:
                before = (self._applied or {}).get(table, {})
                changed = {c: r for c, r in chains.items() if before.get(c) != r}
                gone = [c for c in before if c not in chains]
            if changed or gone or jumps:
                self.iptables.restore(table, changed, delete=gone, jumps=jumps)
            written += len(changed)
            deleted += len(gone)
        return written, deleted

    def applied(self) -> dict[str, dict[str, list[str]]]:
        """{table: {chain: rules}} as last written."""
        return {t: dict(c) for t, c in (self._applied or {}).items()}

    def invalidate(self) -> None:
        """Make the next sync a full one."""
        self._applied = None

    @property
    def ports(self) -> list[ServicePort]:
        return list(self._ports)


def owned(chain: str) -> bool:
    return chain in OWNED_FIXED or chain.startswith(OWNED_PREFIXES)


def remove(iptables: Applier) -> None:
    """Take every chain of the proxy out (`weft proxy cleanup`)."""
    for jump in render.JUMPS:
        iptables.remove_jump(jump)
    for table in ("nat", "filter"):
        chains = [c for c in iptables.chains(table) if owned(c)]
        if chains:
            iptables.restore(table, {}, delete=chains)
