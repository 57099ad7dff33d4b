"""The agent's NetworkPolicy controller: model, render, one nft transaction, conntrack.

Level-triggered like the routes: it syncs on every change to Pods, Namespaces or
NetworkPolicies and at every resync, writing only the chains and map entries that
differ; the table is written whole at start and after a failed sync. A CNI ADD calls
`admit` between allocating the pod's address and plumbing its interface: the address
is in the maps that send it to its chains before the pod has a route, so no packet
reaches it or leaves it unjudged. A thread of its own then judges the established
flows of the pods whose grants changed (flows.py), so neither the next change nor an
ADD waits for conntrack.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping

from weft.agent.policy import flows
from weft.agent.policy.model import Cluster, Grant, Pod, cluster_from_objects, pod_from_object
from weft.agent.policy.render import (
    FAMILY,
    TABLE,
    Cache,
    Rendered,
    Ruleset,
    change_script,
    full_script,
    render,
    revoke_script,
)
from weft.cni.errors import INTERNAL, CNIError
from weft.ipam.datastore import Datastore

log = logging.getLogger(__name__)

WATCHED = ("Pod", "Namespace", "NetworkPolicy")
SLOW_SYNC_SECONDS = 1.0  # a sync this long delays policy and blocks CNI ADDs: say where
# namespace/name -> address, of the pods IPAM has given an address on this node
LocalAddresses = Callable[[], Mapping[str, str]]


class NftError(RuntimeError):
    """nft refused a transaction; nothing of it was applied."""


def nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True,
                          timeout=30)
    if proc.returncode != 0:
        raise NftError(proc.stderr.decode(errors="replace").strip()[:2000])


def remove() -> bool:
    """Delete weft's table (`weft agent cleanup`); False when there was none."""
    try:
        nft(f"delete table {FAMILY} {TABLE}\n")
    except (NftError, OSError):  # no table, or no nft on this machine
        return False
    return True


class Enforcer:
    def __init__(self, store: Datastore, local_addresses: LocalAddresses,
                 apply: Callable[[str], None] = nft,
                 remove_denied: flows.RemoveDenied = flows.remove_denied,
                 observe: Callable[[float, Rendered, Cluster], None] | None = None) -> None:
        self.store = store
        self.local_addresses = local_addresses
        self._apply = apply
        self._remove_denied = remove_denied
        self._observe = observe
        self._lock = threading.Lock()
        self._applied: Ruleset | None = None  # None: the table must be written whole
        self.rendered: Rendered | None = None
        self._cache = Cache()
        self.problems: list[str] = []
        # The flows to judge again, for the judge thread: the pods whose grants changed,
        # and whether every flow is (after the table was written whole).
        self._pending_lock = threading.Lock()
        self._pending: set[tuple[str, str]] = set()
        self._pending_all = False
        self._judge_wake = threading.Event()

    def sync(self, full: bool = False, extra: Pod | None = None) -> None:
        """Make the table match the datastore (raises NftError, CNIError)."""
        with self._lock:
            self._sync_locked(full, extra)

    def admit(self, namespace: str, name: str, address: str) -> None:
        """Put a new pod's address in every set that selects it, before it has a route.
        Fails (and so fails the ADD) when the table cannot be written: fail closed."""
        obj = self._pod_object(namespace, name)
        pod = pod_from_object(obj, address) if obj else Pod(namespace, name, address)
        try:
            self.sync(extra=pod)
        except (NftError, OSError, subprocess.SubprocessError) as err:
            raise CNIError(INTERNAL, f"failed to apply NetworkPolicy for pod "
                           f"{namespace}/{name}", str(err)) from err

    def _pod_object(self, namespace: str, name: str) -> dict | None:
        """The pod's object, from the watch or (just created, not seen yet) the API."""
        for obj in self.store.cached("Pod", namespace):
            if obj["metadata"].get("name") == name:
                return obj
        try:
            return self.store.get("Pod", name, namespace)
        except Exception as err:  # the datastore is away: the model judges it unlabelled
            log.warning("could not read pod %s/%s (%s); its labels are unknown, so only "
                        "policies selecting every pod in %s apply to it", namespace, name,
                        err, namespace)
            return None

    def _sync_locked(self, full: bool, extra: Pod | None = None) -> None:
        started = time.monotonic()
        local = dict(self.local_addresses())
        self._cache.trim()
        cluster, problems = cluster_from_objects(
            self.store.cached("Pod"), self.store.cached("Namespace"),
            self.store.cached("NetworkPolicy"), local, self._cache.interned)
        # This node's pods whose objects the watch has not brought yet (a pod in its
        # ADD, or one the datastore lost) count as pods without labels.
        missing = [Pod(*key.split("/", 1), address) for key, address in local.items()
                   if cluster.find(key) is None and (extra is None or extra.key != key)]
        if extra is not None and cluster.find(extra.key) is None:
            missing.append(extra)
        if missing:
            cluster = Cluster([*cluster.pods, *missing], cluster.namespaces, cluster.policies,
                              cluster.interned)
        for problem in sorted(set(problems) - set(self.problems)):
            log.warning("ignoring a NetworkPolicy: %s", problem)
        self.problems = problems
        on_node = [cluster.find(key) for key in local]
        if extra is not None and extra.key not in local:
            on_node.append(cluster.find(extra.key))
        rendered = render(cluster, [p for p in on_node if p is not None], self._cache)
        modelled = time.monotonic()
        old = self._applied
        if full or old is None:
            self._apply(full_script(rendered.ruleset))
        else:
            script = change_script(old, rendered.ruleset)
            if script:
                self._apply(script)
        self._applied = rendered.ruleset
        before, self.rendered = self.rendered, rendered
        done = time.monotonic()
        if old is None or before is None:
            self._judge(None)
        else:  # a pod whose chain is the same allows the same
            moved = [(ip, d) for d, chains in rendered.ruleset.pods.items()
                     for ip, chain in chains.items() if old.pods[d].get(ip) != chain]
            self._judge(flows.narrowed(before.grants, rendered.grants, moved))
        if done - started >= SLOW_SYNC_SECONDS:
            log.warning("a NetworkPolicy sync took %.1fs: %.1fs to model and render, %.1fs "
                        "for nft", done - started, modelled - started, done - modelled)
        if self._observe:
            self._observe(done - started, rendered, cluster)

    def _judge(self, pods: list[tuple[str, str]] | None) -> None:
        """Have the judge thread look at these pods' flows again (None: every flow).
        Not in the sync: decoding conntrack entries takes CPU that policy changes and
        new pods' ADDs must not wait for."""
        if pods == []:
            return
        with self._pending_lock:
            if pods is None:
                self._pending_all = True
            else:
                self._pending.update(pods)
        self._judge_wake.set()

    def _judge_flows(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._judge_wake.wait(timeout=1.0):
                continue
            self._judge_wake.clear()
            with self._pending_lock:
                pods = None if self._pending_all else sorted(self._pending)
                self._pending, self._pending_all = set(), False
            started = time.monotonic()
            try:
                self._remove_denied(self.grants_of, self._revoke, pods)
            except Exception:
                log.exception("failed to stop the established flows policy now denies")
            if time.monotonic() - started >= SLOW_SYNC_SECONDS:
                log.warning("judging the established flows of %s took %.1fs",
                            "every pod" if pods is None else f"{len(pods)} pod direction(s)",
                            time.monotonic() - started)

    def _revoke(self, flows: list[str]) -> None:
        script = revoke_script(flows)
        if script:
            self._apply(script)

    def invalidate(self) -> None:
        """Write the table whole at the next sync (someone may have changed it)."""
        self._applied = None

    def grants_of(self, address: str, direction: str) -> list[Grant] | None:
        rendered = self.rendered
        if rendered is None:
            return None
        return rendered.grants.get((address, direction))

    def run(self, stop: threading.Event, resync_seconds: float) -> None:
        """Sync at every change, and every `resync_seconds` from the datastore anew
        (the periodic pass writes only what differs, as a change does)."""
        threading.Thread(target=self._judge_flows, args=(stop,), name="policy-flows",
                         daemon=True).start()
        seen = ""
        last_full = time.monotonic()
        while not stop.is_set():
            try:
                now = self.store.wait(WATCHED, seen, timeout=1.0)
            except Exception:
                log.exception("failed to watch pods, namespaces and policies")
                stop.wait(1.0)
                continue
            due = time.monotonic() - last_full >= resync_seconds
            if now == seen and not due:
                continue
            try:
                self.sync()
                seen = now
                if due:
                    last_full = time.monotonic()
            except NftError as err:  # reported; retried at the next change or resync
                log.error("NetworkPolicy sync failed: nft refused the change: %s", err)
                self.invalidate()
                stop.wait(1.0)
            except Exception:
                log.exception("NetworkPolicy sync failed; retrying")
                self.invalidate()
                stop.wait(1.0)
