"""The `kubernetes` datastore: the API server, through the official client.

Objects go in and out as the API server's own JSON (camelCase dicts), never as the
client's typed models, so they are the same dicts the `local` store keeps as YAML.
`revision`, `wait` and `cached` are served from list+watch threads (one per kind,
started on first use) that keep every object of their kind, as client-go's informers
do: a controller reconciles from memory and never lists the API server again.

Imported only by `open_datastore`: the CNI fast path must never load the client.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from weft.ipam.datastore import (
    GROUP,
    KINDS,
    AlreadyExists,
    DatastoreError,
    Kind,
    NotFound,
    Object,
    kind_of,
    name_of,
)

log = logging.getLogger(__name__)

# Built-in kinds: the snake_case name in the typed client's method names, and its API class.
_BUILTIN: dict[str, tuple[str, type]] = {
    "Node": ("node", client.CoreV1Api),
    "Pod": ("pod", client.CoreV1Api),
    "Service": ("service", client.CoreV1Api),
    "EndpointSlice": ("endpoint_slice", client.DiscoveryV1Api),
    "Namespace": ("namespace", client.CoreV1Api),
    "NetworkPolicy": ("network_policy", client.NetworkingV1Api),
}
# The typed client's verbs for custom objects, where they differ from the built-in ones.
_CUSTOM_VERBS = {"read": "get"}

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read): a dead API server must not hang a CNI ADD
APPLY_ATTEMPTS = 5  # replace conflicts (someone wrote in between) before apply gives up
LIST_PAGE = 500
WATCH_SECONDS = (240, 300)  # server-side watch timeout, randomised as client-go does
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0


class KubernetesStore:
    """The Datastore protocol over the Kubernetes API; safe to share between threads."""

    def __init__(self, kubeconfig: str = "") -> None:
        where = kubeconfig or "the in-cluster service account"
        try:
            if kubeconfig:
                self.api = config.new_client_from_config(config_file=kubeconfig)
            else:
                # A Configuration of our own, so the process-wide default stays untouched.
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                self.api = client.ApiClient(configuration)
        except Exception as err:  # ConfigException, OSError, YAML errors: all mean "no config"
            raise DatastoreError(f"failed to load the Kubernetes config from {where}: "
                                 f"{err}") from err
        self._resources = {name: _Resource(self.api, kind) for name, kind in KINDS.items()}
        self._watchers: dict[str, _Watcher] = {}
        self._watchers_lock = threading.Lock()
        self._changed = threading.Condition()  # notified at every watcher's change
        # How long the first `revision` of a kind waits for its initial list, so that the
        # first token already stands for the current state.
        self.sync_timeout = 5.0

    # -- the Datastore protocol ---------------------------------------------

    def get(self, kind: str, name: str, namespace: str = "") -> Object | None:
        resource = self._resources[kind]
        namespace = resource.namespace(namespace)
        try:
            return resource.complete(resource.call("read", name=name, namespace=namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise _failure("get", kind, name, namespace, err) from err
        except _TRANSPORT_ERRORS as err:
            raise _failure("get", kind, name, namespace, err) from err

    def list(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        resource = self._resources[kind]
        try:
            items, _ = resource.list_all(namespace, f"spec.nodeName={node}" if node else "")
        except (ApiException, *_TRANSPORT_ERRORS) as err:
            where = f"in namespace {namespace}" if namespace else "in all namespaces"
            raise DatastoreError(f"failed to list {kind} {where}: {_cause(err)}") from err
        return items

    def create(self, obj: Object) -> Object:
        return self._create(*self._prepare(obj), verb="create")

    def apply(self, obj: Object) -> Object:
        """Create, or replace what is there: an update keeps the object's identity (uid)."""
        resource, namespace, name, body = self._prepare(obj)
        kind = resource.kind.kind
        for _ in range(APPLY_ATTEMPTS):
            fresh = copy.deepcopy(body)
            fresh["metadata"].pop("resourceVersion", None)  # a create must not carry one
            try:
                return self._create(resource, namespace, name, fresh, verb="apply")
            except AlreadyExists:
                pass
            current = self.get(kind, name, namespace)
            if current is None:
                continue  # deleted in between: create again
            # Optimistic concurrency: the replace fails (409) if anyone wrote since our read.
            version = current["metadata"].get("resourceVersion")
            if version:
                body["metadata"]["resourceVersion"] = version
            try:
                return resource.complete(
                    resource.call("replace", name=name, namespace=namespace, body=body))
            except ApiException as err:
                if err.status not in (404, 409):
                    raise _failure("apply", kind, name, namespace, err) from err
            except _TRANSPORT_ERRORS as err:
                raise _failure("apply", kind, name, namespace, err) from err
        raise DatastoreError(f"failed to apply {kind} {_label(name, namespace)}: it kept "
                             f"changing under us ({APPLY_ATTEMPTS} conflicting writes)")

    def delete(self, kind: str, name: str, namespace: str = "") -> bool:
        resource = self._resources[kind]
        namespace = resource.namespace(namespace)
        try:
            # Background: the API server's garbage collector then deletes what the object
            # owns (a Node's IPAMBlocks), as the local store does at once.
            resource.call("delete", name=name, namespace=namespace,
                          propagation_policy="Background")
        except ApiException as err:
            if err.status == 404:
                return False
            raise _failure("delete", kind, name, namespace, err) from err
        except _TRANSPORT_ERRORS as err:
            raise _failure("delete", kind, name, namespace, err) from err
        return True

    def annotate(self, kind: str, name: str, annotations: dict[str, str],
                 namespace: str = "") -> None:
        """A merge patch: other writers' annotations and fields are left alone."""
        resource = self._resources[kind]
        namespace = resource.namespace(namespace)
        patch = {"metadata": {"annotations": dict(annotations)}}
        try:
            resource.call("patch", name=name, namespace=namespace, body=patch,
                          _content_type=MERGE_PATCH)
        except ApiException as err:
            if err.status == 404:
                raise NotFound(f"{kind} {_label(name, namespace)} does not exist") from err
            raise _failure("annotate", kind, name, namespace, err) from err
        except _TRANSPORT_ERRORS as err:
            raise _failure("annotate", kind, name, namespace, err) from err

    def set_status(self, kind: str, name: str, status: dict[str, Any],
                   namespace: str = "") -> None:
        """A merge patch of the status subresource (the spec is the owner's, not ours)."""
        resource = self._resources[kind]
        namespace = resource.namespace(namespace)
        try:
            resource.call("patch", name=name, namespace=namespace, status=True,
                          body={"status": status}, _content_type=MERGE_PATCH)
        except ApiException as err:
            if err.status == 404:
                raise NotFound(f"{kind} {_label(name, namespace)} does not exist") from err
            raise _failure("update the status of", kind, name, namespace, err) from err
        except _TRANSPORT_ERRORS as err:
            raise _failure("update the status of", kind, name, namespace, err) from err

    def revision(self, kinds: Sequence[str]) -> str:
        """Each kind's change counter, kept by its watch thread. Never raises; only the call
        that starts a kind's watch blocks (up to `sync_timeout`, for the initial list)."""
        return self._revision(self._synced_watchers(kinds))

    def wait(self, kinds: Sequence[str], since: str, timeout: float) -> str:
        watchers = self._synced_watchers(kinds)
        with self._changed:
            self._changed.wait_for(lambda: self._revision(watchers) != since, timeout)
        return self._revision(watchers)

    def cached(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        """From the kind's watch once it has listed; until then (the API server is away
        at start) a list, which raises as `list` does."""
        watcher = self._synced_watchers([kind])[0]
        if not watcher.synced.is_set():
            return self.list(kind, namespace, node)
        return [obj for obj in watcher.objects()
                if (not namespace or obj["metadata"].get("namespace") == namespace)
                and (not node or (obj.get("spec") or {}).get("nodeName") == node)]

    def _synced_watchers(self, kinds: Sequence[str]) -> list[_Watcher]:
        started = [self._watcher(kind) for kind in kinds]
        deadline = time.monotonic() + self.sync_timeout
        for watcher, new in started:
            if new:
                watcher.synced.wait(max(0.0, deadline - time.monotonic()))
        return [watcher for watcher, _ in started]

    @staticmethod
    def _revision(watchers: Sequence[_Watcher]) -> str:
        return "|".join(f"{w.resource.kind.kind}:{w.generation}" for w in watchers)

    # -- beyond the protocol ------------------------------------------------

    def close(self) -> None:
        """Stop the watch threads and drop the connections (tests, agent shutdown)."""
        with self._watchers_lock:
            watchers = list(self._watchers.values())
            self._watchers.clear()
        deadline = time.monotonic() + 5
        for watcher in watchers:
            watcher.stop()
        for watcher in watchers:
            while watcher.is_alive() and time.monotonic() < deadline:
                watcher.stop()  # again: a watch request may have been in flight
                watcher.join(0.05)
        self.api.close()

    def _watcher(self, kind: str) -> tuple[_Watcher, bool]:
        """The kind's watch thread, started on first use; and whether it was just started."""
        with self._watchers_lock:
            watcher = self._watchers.get(kind)
            if watcher is not None:
                return watcher, False
            watcher = self._watchers[kind] = _Watcher(self._resources[kind],
                                                      self._changed)
            watcher.start()
            return watcher, True

    def _prepare(self, obj: Object) -> tuple[_Resource, str, str, Object]:
        """The request body for a create or replace: complete, and without the fields
        the API server sets itself (it refuses a create that carries resourceVersion)."""
        kind = kind_of(obj)
        namespace, name = name_of(obj)
        body = copy.deepcopy(obj)
        body["apiVersion"] = obj.get("apiVersion") or kind.api_version
        meta = body.setdefault("metadata", {})
        for key in ("uid", "resourceVersion", "creationTimestamp", "generation",
                    "managedFields", "selfLink"):
            meta.pop(key, None)
        if kind.namespaced:
            meta["namespace"] = namespace
        return self._resources[kind.kind], namespace, name, body

    def _create(self, resource: _Resource, namespace: str, name: str, body: Object,
                verb: str) -> Object:
        kind = resource.kind.kind
        try:
            return resource.complete(resource.call("create", namespace=namespace, body=body))
        except ApiException as err:
            if err.status == 409:
                raise AlreadyExists(f"{kind} {_label(name, namespace)} already exists") from err
            raise _failure(verb, kind, name, namespace, err) from err
        except _TRANSPORT_ERRORS as err:
            raise _failure(verb, kind, name, namespace, err) from err


class _Resource:
    """The typed client's calls for one kind, asked for raw JSON instead of models."""

    def __init__(self, api: client.ApiClient, kind: Kind) -> None:
        self.kind = kind
        if kind.kind in _BUILTIN:
            self._snake, api_class = _BUILTIN[kind.kind]
            self._api: Any = api_class(api)
            self._custom: dict[str, str] | None = None
        else:
            group, _, version = kind.api_version.partition("/")
            if group != GROUP or kind.namespaced:
                raise DatastoreError(f"weft has no API mapping for {kind.kind}")
            self._api = client.CustomObjectsApi(api)
            self._custom = {"group": group, "version": version, "plural": kind.plural}

    def namespace(self, namespace: str) -> str:
        """Namespaced kinds default to `default`, as kubectl and the local store do."""
        return (namespace or "default") if self.kind.namespaced else ""

    def method(self, verb: str, namespace: str, status: bool = False,
               ) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The client method for a verb (on the status subresource if `status`), with the
        arguments that address the resource. For `list` an empty namespace means all."""
        suffix = "_status" if status else ""
        if self._custom is not None:
            name = f"{_CUSTOM_VERBS.get(verb, verb)}_cluster_custom_object{suffix}"
            return getattr(self._api, name), dict(self._custom)
        if not self.kind.namespaced:
            return getattr(self._api, f"{verb}_{self._snake}{suffix}"), {}
        if namespace:
            return (getattr(self._api, f"{verb}_namespaced_{self._snake}{suffix}"),
                    {"namespace": namespace})
        return getattr(self._api, f"{verb}_{self._snake}_for_all_namespaces"), {}

    def call(self, verb: str, *, namespace: str = "", status: bool = False,
             **kwargs: Any) -> Object:
        method, address = self.method(verb, namespace, status)
        response = method(**address, **kwargs, _preload_content=False,
                          _request_timeout=REQUEST_TIMEOUT)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def list_all(self, namespace: str, field_selector: str = "") -> tuple[list[Object], str]:
        """Every object (page by page) and the list's resourceVersion, to watch from."""
        items: list[Object] = []
        token = ""
        while True:
            extra: dict[str, Any] = {"limit": LIST_PAGE}
            if field_selector:
                extra["field_selector"] = field_selector
            if token:
                extra["_continue"] = token
            page = self.call("list", namespace=namespace, **extra)
            items.extend(self.complete(item) for item in page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def complete(self, obj: Object) -> Object:
        """List items come without apiVersion and kind; put them back."""
        obj.setdefault("apiVersion", self.kind.api_version)
        obj.setdefault("kind", self.kind.kind)
        return obj


class _RawWatch(watch.Watch):
    """The client's Watch, minus deserialising every event into a typed model: only the
    raw JSON is used, and the stock raw mode mishandles ERROR events."""

    def unmarshal_event(self, data: str, return_type: Any) -> dict[str, Any] | None:
        if not data or data.isspace():
            return None
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            return None
        event["raw_object"] = event.get("object")
        return event


class _Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class _Watcher(threading.Thread):
    """List, then watch from the list's resourceVersion, for ever: a minimal informer.

    It keeps every object of its kind. `generation` counts changes to them (keyed by
    namespace/name, compared by resourceVersion, or by content where a server sends
    none), and each change notifies `changed`. Replays, relists and bookmarks that
    change nothing do not count, so a broken watch costs no spurious reconcile.
    """

    def __init__(self, resource: _Resource, changed: threading.Condition) -> None:
        super().__init__(name=f"weft-watch-{resource.kind.plural}", daemon=True)
        self.resource = resource
        self.generation = 0
        self.synced = threading.Event()
        self._changed = changed
        self._objects: dict[tuple[str, str], tuple[str, Object]] = {}  # key: (fingerprint, obj)
        self._objects_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: _RawWatch | None = None

    def stop(self) -> None:
        self._stopping.set()
        current = self._watch
        if current is not None:
            current.stop()  # shuts the socket down under a blocked read

    def run(self) -> None:
        kind = self.resource.kind.kind
        version: str | None = None  # None: (re)list first
        delay, failing, expired = BACKOFF_FIRST, False, False
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._relist()
                    self.synced.set()
                started = time.monotonic()
                version, events = self._follow(version)
                if events or time.monotonic() - started > 1.0:
                    delay, failing, expired = BACKOFF_FIRST, False, False
                    continue  # the server ended the watch (its timeout): resume at once
                # Closed at once with nothing said: do not hammer a flapping server.
            except _Gone:
                log.info("watch of %s expired; listing again", kind)
                version = None
                if not expired:
                    expired = True
                    continue
                # Expired again straight after a list: back off as for any failure.
            except Exception as err:  # the API server is away or broken: keep trying
                if self._stopping.is_set():
                    break
                (log.debug if failing else log.warning)(
                    "watching %s failed (%s); retrying in %.1fs", kind, _cause(err), delay)
                failing = True
            self._stopping.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def objects(self) -> list[Object]:
        """The kind's objects as last seen; shared with the watch: read, never change."""
        with self._objects_lock:
            return [obj for _, obj in self._objects.values()]

    def _relist(self) -> str:
        items, version = self.resource.list_all("")
        objects = {_key(obj): (_fingerprint(obj), obj) for obj in items}
        with self._objects_lock:
            changed = {k: f for k, (f, _) in objects.items()} != \
                {k: f for k, (f, _) in self._objects.items()}
            self._objects = objects
        if changed:
            self._bump()
        return version

    def _bump(self) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def _follow(self, version: str) -> tuple[str, int]:
        """Watch until the server ends the stream; the last resourceVersion seen, and how
        many events came."""
        method, address = self.resource.method("list", "")
        kwargs: dict[str, Any] = {
            **address,
            "allow_watch_bookmarks": True,
            "timeout_seconds": random.randint(*WATCH_SECONDS),
            "_request_timeout": (REQUEST_TIMEOUT[0], WATCH_SECONDS[1] + 30),
        }
        if version:
            kwargs["resource_version"] = version
        self._watch = _RawWatch()
        events = 0
        if self._stopping.is_set():  # stop() may have come before self._watch was set
            return version, events
        try:
            for event in self._stream(method, kwargs):
                events += 1
                obj = event.get("raw_object") or {}
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._seen_changed(_key(obj), self.resource.complete(obj))
                elif event.get("type") == "DELETED":
                    self._seen_changed(_key(obj), None)
                if self._stopping.is_set():
                    break
        finally:
            self._watch = None
        return version, events

    def _stream(self, method: Callable[..., Any], kwargs: dict[str, Any]
                ) -> Iterator[dict[str, Any]]:
        assert self._watch is not None
        try:
            yield from self._watch.stream(method, **kwargs)
        except ApiException as err:
            if err.status == 410:
                raise _Gone from err
            raise

    def _seen_changed(self, key: tuple[str, str], obj: Object | None) -> None:
        fingerprint = _fingerprint(obj) if obj is not None else None
        if self._objects.get(key, (None,))[0] == fingerprint:
            return
        with self._objects_lock:
            if obj is None:
                del self._objects[key]
            else:
                self._objects[key] = (fingerprint, obj)
        self._bump()


def _key(obj: Object) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _fingerprint(obj: Object) -> str:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if version:
        return str(version)
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode(), usedforsecurity=False
                        ).hexdigest()


_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    urllib3.exceptions.HTTPError, OSError, ValueError)  # ValueError: a body that is not JSON


def _label(name: str, namespace: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _failure(verb: str, kind: str, name: str, namespace: str, err: Exception) -> DatastoreError:
    return DatastoreError(f"failed to {verb} {kind} {_label(name, namespace)}: {_cause(err)}")


def _cause(err: BaseException) -> str:
    """What went wrong, in one line: the API server's own message where it gave one."""
    if isinstance(err, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(err.body or "").get("message") or ""
        text = f"HTTP {err.status} {err.reason or ''}".rstrip()
        return f"{text}: {message}" if message else text
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return f"cannot reach the API server: {err.reason}"
    return str(err) or type(err).__name__
