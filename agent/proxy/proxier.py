"""The proxy's sync loop: render, then apply once, and only what changed.

As kube-proxy does it: a change tracker hands the sync only the Services that
changed, each of their service ports renders on its own (reused while its inputs
are the same), and a partial sync compares just those Services' chains with what
it last wrote, so it costs about what it writes, not what the proxy holds. The
shared chains (WEFT-SERVICES and the like) are rebuilt, in the order of the
Services' names, only when a changed Service's lines in them changed. The first
sync, the one after any failure and the periodic one (`invalidate`) are full:
they read each table once, write every chain and the missing jumps, and delete
leftover WEFT- chains, which also repairs hand edits. One iptables-restore per
table. Syncs are batched: at most one per `min_interval`. Stale UDP conntrack
entries are reconciled after the new rules are in place.

Lock rule: `sync` is called from one thread only (the proxy's loop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from weft.agent.iptables import Applier, Jump
from weft.agent.proxy import conntrack, render
from weft.agent.proxy.model import ServicePort
from weft.agent.proxy.tracker import ChangeTracker, Key
from weft.ipam.datastore import Datastore

log = logging.getLogger(__name__)

OWNED_PREFIXES = ("WEFT-SVC-", "WEFT-SEP-", "WEFT-EXT-")
OWNED_FIXED = (render.SERVICES, render.NODEPORTS, render.MARK_MASQ, render.EXTERNAL_SERVICES)
TABLES = ("nat", "filter")

Rendered = list[tuple[ServicePort, render.PortRules]]  # one Service's ports, in spec order
Tables = dict[str, dict[str, list[str]]]  # {table: {chain: rules}}


@dataclass
class SyncResult:
    full: bool
    written: int
    deleted: int
    rules: int
    service_ports: int
    seconds: float


@dataclass
class Proxier:
    store: Datastore
    node: str
    cluster_cidr: str
    iptables: Applier
    min_interval: float = 1.0
    conntrack_cleanup: bool = True
    _applied: Tables | None = None  # None: the next sync is a full one
    _services: dict[Key, Rendered] = field(default_factory=dict)  # the desired state
    _port_count: int = 0
    _rule_count: int = 0
    _frontends: set[tuple[str, int]] = field(default_factory=set)  # UDP, at the last sync
    _last_sync: float = 0.0
    _tracker: ChangeTracker = field(default_factory=ChangeTracker)

    def sync(self) -> SyncResult:
        """Bring the proxy's chains in line with the datastore's Services."""
        wait = self._last_sync + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # batch: changes that arrive meanwhile go in this sync
        started = time.monotonic()
        changes = self._tracker.changes(self.store.list("Service"),
                                        self.store.list("EndpointSlice"))
        before = {key: self._render(key, ports) for key, ports in changes.items()}
        full = self._applied is None
        try:
            written, deleted = self._apply_full() if full else self._apply_changes(before)
        except Exception:
            self._applied = None  # the next sync writes everything
            raise
        if self.conntrack_cleanup:
            self._clean_conntrack()
        self._last_sync = time.monotonic()
        result = SyncResult(full, written, deleted, self._rule_count, self._port_count,
                            self._last_sync - started)
        log.info("synced %d service ports: %s, %d chains written, %d deleted, %.3fs",
                 self._port_count, "full" if full else "partial", written, deleted,
                 result.seconds)
        return result

    def _render(self, key: Key, ports: list[ServicePort]) -> Rendered:
        """Make `ports` the Service's desired state, re-rendering only ports that changed;
        returns what it was."""
        old = self._services.pop(key, [])
        reuse = dict(old)
        new = [(sp, reuse[sp] if sp in reuse else render.render_port(sp, self.node,
                                                                     self.cluster_cidr))
               for sp in ports]
        if new:
            self._services[key] = new
        self._port_count += len(new) - len(old)
        return old

    def _parts(self) -> Iterable[render.PortRules]:
        """Every service port's rules, in the order of the Services' names, so that a
        shared chain comes out the same whatever order the datastore lists them in."""
        return (part for key in sorted(self._services) for _, part in self._services[key])

    def _apply_full(self) -> tuple[int, int]:
        wanted = render.assemble(list(self._parts()))
        self._applied = {table: {} for table in TABLES}
        self._rule_count = 0
        written = deleted = 0
        for table in TABLES:
            # One read of the table finds leftovers of an earlier run and the jumps that
            # are missing; both are fixed in the same restore.
            existing = self.iptables.chains(table)
            gone = [c for c in existing if owned(c) and c not in wanted[table]]
            jumps = [j for j in render.JUMPS if j.table == table
                     and not j.found_in(existing.get(j.chain, []))]
            self._restore(table, wanted[table], gone, jumps)
            written += len(wanted[table])
            deleted += len(gone)
        return written, deleted

    def _apply_changes(self, before: dict[Key, Rendered]) -> tuple[int, int]:
        """Write the chains of the changed Services whose rules differ from what was
        written, and the shared chains if a changed Service's lines in them did."""
        applied = self._applied or {}
        changed: Tables = {table: {} for table in TABLES}
        gone: dict[str, list[str]] = {table: [] for table in TABLES}
        candidates: dict[tuple[str, str], list[str]] = {}
        shared = False
        for key, old in before.items():
            new = self._services.get(key, [])
            now = chains_of(new)
            candidates.update(now)
            for table, chain in chains_of(old):
                if (table, chain) not in now:
                    gone[table].append(chain)
            shared = shared or [p.shared() for _, p in old] != [p.shared() for _, p in new]
        if shared:
            candidates.update(render.shared_chains(self._parts()))
        for (table, chain), rules in candidates.items():
            if applied[table].get(chain) != rules:
                changed[table][chain] = rules
        for table in TABLES:
            if changed[table] or gone[table]:
                self._restore(table, changed[table], gone[table], [])
        return sum(map(len, changed.values())), sum(map(len, gone.values()))

    def _restore(self, table: str, chains: dict[str, list[str]], gone: list[str],
                 jumps: list[Jump]) -> None:
        """One iptables-restore, and the bookkeeping of what is now written."""
        if chains or gone or jumps:
            self.iptables.restore(table, chains, delete=gone, jumps=jumps)
        applied = (self._applied or {})[table]
        for chain in gone:
            self._rule_count -= len(applied.pop(chain, ()))
        for chain, rules in chains.items():
            self._rule_count += len(rules) - len(applied.get(chain, ()))
            applied[chain] = rules

    def _clean_conntrack(self) -> None:
        # The rules are in place whatever happens here: a failed cleanup is logged
        # and done again at the next sync, and does not make this sync a failure
        # (which would keep the proxy unready with every service programmed).
        ports = [sp for rendered in self._services.values() for sp, _ in rendered]
        previous, self._frontends = self._frontends, set(conntrack.frontends(ports, self.node))
        try:
            conntrack.reconcile(ports, self.node, previous)
        except Exception as err:  # netlink errors, a conntrack table we may not read
            log.warning("could not delete stale UDP conntrack entries: %s", err)

    def applied(self) -> Tables:
        """{table: {chain: rules}} as last written."""
        return {t: dict(c) for t, c in (self._applied or {}).items()}

    def invalidate(self) -> None:
        """Make the next sync a full one."""
        self._applied = None


def chains_of(rendered: Rendered) -> dict[tuple[str, str], list[str]]:
    """{(table, chain): rules} of one Service's own chains."""
    return {name: rules for _, part in rendered for name, rules in part.chains.items()}

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
