"""Which Services changed between two reads of the datastore, by resourceVersion.

As kube-proxy's change trackers do: at 10,000 Services, parsing every one again for
one endpoint change would cost far more than the change writes. A sync still gets
every object from the datastore (it offers no change feed), but an unchanged one
costs a dictionary look-up; only a Service whose object, or one of whose
EndpointSlices, is new, changed or gone is parsed again. Objects without a
resourceVersion are always parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from weft.agent.proxy.model import ServicePort, owner_of, ports_of

Key = tuple[str, str]  # (namespace, name)


def key_of(obj: Mapping) -> tuple[Key, str | None]:
    """The object's (namespace, name) and its resourceVersion."""
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "default", meta.get("name", "")), \
        meta.get("resourceVersion")


class ChangeTracker:
    def __init__(self) -> None:
        self._services: dict[Key, tuple[str | None, Mapping]] = {}  # -> (version, object)
        self._slices: dict[Key, str | None] = {}  # -> version
        # The slices of each Service, and the Service each slice is indexed under: kept
        # up to date as slices are read, even by a call that then fails.
        self._by_owner: dict[Key, dict[Key, Mapping]] = {}
        self._owner: dict[Key, Key] = {}

    def changes(self, services: Iterable[Mapping], slices: Iterable[Mapping],
                ) -> dict[Key, list[ServicePort]]:
        """{Service: its service ports now} for each Service that changed since the last
        call; [] for one that is gone or not proxied.

        What was seen is kept only once every changed Service parsed, so one that
        fails to parse is tried again at the next call.
        """
        dirty: set[Key] = set()
        seen_slices: dict[Key, str | None] = {}
        for s in slices:
            key, version = key_of(s)
            seen_slices[key] = version
            if version is None or self._slices.get(key) != version:
                self._index(key, s, dirty)
        for key in self._owner.keys() - seen_slices.keys():
            self._index(key, None, dirty)
        seen_services: dict[Key, tuple[str | None, Mapping]] = {}
        for svc in services:
            key, version = key_of(svc)
            before = self._services.get(key)
            if before is None or version is None or before[0] != version:
                dirty.add(key)
            seen_services[key] = (version, svc)
        dirty |= self._services.keys() - seen_services.keys()
        out = {}
        for key in dirty:
            svc = seen_services.get(key)
            mine = list(self._by_owner.get(key, {}).values())
            out[key] = ports_of(svc[1], mine) if svc else []
        self._services, self._slices = seen_services, seen_slices
        return out

    def _index(self, key: Key, obj: Mapping | None, dirty: set[Key]) -> None:
        """File slice `key` under the Service it belongs to now (`obj` None: it is
        gone); the Service it left and the one it joined both changed."""
        before = self._owner.pop(key, None)
        if before is not None:
            siblings = self._by_owner[before]
            del siblings[key]
            if not siblings:
                del self._by_owner[before]
            dirty.add(before)
        after = owner_of(obj) if obj is not None else None
        if after is not None:
            self._owner[key] = after
            self._by_owner.setdefault(after, {})[key] = obj
            dirty.add(after)
