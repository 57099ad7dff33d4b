"""The one interface through which weft reads and writes cluster state.

Objects are plain dicts in Kubernetes' own schema (apiVersion, kind, metadata,
spec, status), so the `local` store's YAML files and the API server's objects are
the same thing. `create` is exclusive: it is the lock behind block claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Object = dict[str, Any]

GROUP = "weft.dev"
VERSION = "v1"


@dataclass(frozen=True)
class Kind:
    """How a kind of object is addressed: its API group/version, plural and scope."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool


KINDS = {
    k.kind: k
    for k in (
        Kind("IPPool", f"{GROUP}/{VERSION}", "ippools", False),
        Kind("IPAMBlock", f"{GROUP}/{VERSION}", "ipamblocks", False),
        Kind("Node", "v1", "nodes", False),
        Kind("Pod", "v1", "pods", True),
        Kind("Service", "v1", "services", True),
        Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", True),
        Kind("Namespace", "v1", "namespaces", False),
        Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", True),
    )
}


class DatastoreError(Exception):
    """The datastore could not be read or written."""


class AlreadyExists(DatastoreError):
    """An exclusive create lost: the object is already there."""


class NotFound(DatastoreError):
    """The object is not there."""


class Datastore(Protocol):
    """What every datastore implements; both are held to one contract test suite."""

    def get(self, kind: str, name: str, namespace: str = "") -> Object | None:
        """The object, or None when it does not exist."""

    def list(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        """All objects of a kind (in one namespace, or all namespaces when empty); with
        `node`, only those whose spec.nodeName it is (an agent asks for its own pods:
        on a big cluster a list of every pod is what the API server can least afford)."""

    def create(self, obj: Object) -> Object:
        """Create exclusively; raise AlreadyExists when the name is taken."""

    def apply(self, obj: Object) -> Object:
        """Create or replace."""

    def delete(self, kind: str, name: str, namespace: str = "") -> bool:
        """Delete (and the objects it owns); False when it was not there."""

    def annotate(self, kind: str, name: str, annotations: dict[str, str],
                 namespace: str = "") -> None:
        """Merge annotations into an existing object (raise NotFound if it is not there)."""

    def set_status(self, kind: str, name: str, status: dict[str, Any],
                   namespace: str = "") -> None:
        """Merge into an existing object's status (raise NotFound if it is not there)."""

    def revision(self, kinds: Sequence[str]) -> str:
        """A token that changes whenever an object of `kinds` changes: the watch."""

    def wait(self, kinds: Sequence[str], since: str, timeout: float) -> str:
        """Block until `revision(kinds)` differs from `since`, or `timeout` seconds pass;
        the revision then. Wakes at the change (no polling interval to wait out)."""

    def cached(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        """`list` as the kind's watch last saw it: what a controller reconciles from,
        without a request per pass. Read the objects, never change them."""


def kind_of(obj: Object) -> Kind:
    """Look up an object's kind, or say which kinds weft understands."""
    kind = KINDS.get(obj.get("kind", ""))
    if kind is None:
        raise DatastoreError(
            f"unknown kind {obj.get('kind')!r}; weft stores {', '.join(sorted(KINDS))}"
        )
    return kind


def name_of(obj: Object) -> tuple[str, str]:
    """(namespace, name) of an object, checking that it has a name."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise DatastoreError(f"{obj.get('kind', 'object')} has no metadata.name")
    namespace = meta.get("namespace") or ""
    if kind_of(obj).namespaced and not namespace:
        namespace = "default"
    return namespace, name


def open_datastore(kind: str, path: str) -> Datastore:
    """The datastore a config names: `local` (a directory) or `kubernetes`."""
    if kind == "local":
        from weft.ipam.local import LocalStore

        return LocalStore(path)
    if kind == "kubernetes":
        from weft.ipam.kubernetes import KubernetesStore

        return KubernetesStore(path)  # path: a kubeconfig; empty for in-cluster
    raise DatastoreError(f"the {kind!r} datastore is not available in this build")
