"""kmock's KubernetesEmulator, taught what a real API server does that the contract
depends on (see `ApiServer`), served over HTTP from a thread with its own loop.

Shared by the datastore contract suite and the cluster tests; `Emulator(netns=...)`
serves inside a network namespace, so agents in other namespaces can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock

from weft.cni.netns import entered
from weft.ipam.datastore import KINDS

CLOSE = "X-TEST-CLOSE"  # a bus item that ends the watch streams it reaches


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus what a real API server does and kmock does not:

    - sets uid, creationTimestamp and a growing resourceVersion (kmock sets none, so
      "apply keeps the uid" would compare None with None);
    - PUT replaces the object, refusing a stale resourceVersion with 409 (kmock has no
      PUT at all: it answers 500, and its PATCH merges); `conflicts` makes the next PUTs
      fail with 409 as if another writer had come first;
    - a create that carries a resourceVersion is refused, as the real storage does;
    - a list carries the current resourceVersion (kmock's says "..."), and honours the
      field selector `spec.nodeName=` (the only one weft uses);
    - watches can be broken on purpose: `break_watches` ends the open streams, and
      answers the next watch with the in-stream 410 Expired a real server sends.
    It still does not garbage-collect dependents, nor honour a watch's resourceVersion
    (it replays every object as ADDED) or timeoutSeconds.
    """

    version: int = 0
    lists: int = 0
    watches: int = 0
    expired: int = 0
    expire_next: int = 0
    conflicts: int = 0
    deletes: list[dict[str, str]] = attrs.field(factory=list)
    calls: list[tuple[str, str, str, dict[str, str]]] = attrs.field(factory=list)

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Who asked for what: (bearer token, HTTP method, path, query), for RBAC checks.
        self.calls.append((request.headers.get("Authorization", ""),
                           str(getattr(request.method, "value", request.method)).upper(),
                           request.url.path, dict(request.url.query)))
        if request.resource is not None and request.action == kmock.action.DELETE:
            self.deletes.append(dict(request.params))  # propagationPolicy is a query parameter
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                if (request.data.get("metadata") or {}).get("resourceVersion"):
                    raise kmock.KubernetesError(
                        status=500, reason="InternalError",
                        message="resourceVersion should not be set on objects to be created")
                request.data.setdefault("metadata", {}).update(
                    uid=str(uuid.uuid4()), resourceVersion=self._next_version(),
                    creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            elif request.action == kmock.action.UPDATE:
                request.data.setdefault("metadata", {})["resourceVersion"] = \
                    self._next_version()
            elif request.method == kmock.method.PUT and request.name:
                return await self._replace(request)
        return await super()._handle(request)

    async def _replace(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            current = self.objects[key].last.raw["metadata"]
            sent = (request.data.get("metadata") or {}).get("resourceVersion")
            if self.conflicts:
                self.conflicts -= 1
                sent = "stale"
            if sent and sent != current["resourceVersion"]:
                raise kmock.KubernetesError(
                    status=409, reason="Conflict",
                    message="the object has been modified; please apply your changes to "
                            "the latest version and try again")
            body = copy.deepcopy(request.data)
            body.setdefault("metadata", {}).update(
                uid=current["uid"], creationTimestamp=current["creationTimestamp"],
                resourceVersion=self._next_version())
            self.objects[key].create(body)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": body})
        return aiohttp.web.json_response(body)

    async def _serve_list(self, request: kmock.Request) -> Any:
        self.lists += 1
        payload = await super()._serve_list(request)
        payload["metadata"] = {"resourceVersion": str(self.version)}
        selector = request.params.get("fieldSelector", "")
        if selector.startswith("spec.nodeName="):
            node = selector.removeprefix("spec.nodeName=")
            payload["items"] = [item for item in payload.get("items") or []
                                if (item.get("spec") or {}).get("nodeName") == node]
        return payload

    async def _serve_watch(self, request: kmock.Request) -> Any:
        self.watches += 1
        if self.expire_next:
            self.expire_next -= 1
            self.expired += 1
            yield {"type": "ERROR", "object": {
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": 410, "reason": "Expired", "message": "too old resource version"}}
            return
        events = super()._serve_watch(request)
        try:
            async for event in events:
                if isinstance(event, dict) and event.get("type") == CLOSE:
                    return
                yield event
        finally:
            await events.aclose()

    async def break_watches(self, expire: bool) -> None:
        self.expire_next += int(expire)
        for bus in list(self._buses.values()):
            await bus.put({"type": CLOSE})


class Emulator:
    """An ApiServer served over HTTP on 127.0.0.1 from a thread with its own loop."""

    def __init__(self, netns: str = "", host: str = "127.0.0.1") -> None:
        self.netns, self.host = netns, host
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.api: ApiServer | None = None
        self.url = ""
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def __enter__(self) -> Emulator:
        self.thread.start()
        assert self.started.wait(10), "the emulator did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the emulator did not stop"
        self.loop.close()
        if self.error is not None:
            raise self.error

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the emulator's loop (its state is not thread-safe)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def kubeconfig(self, path: Path, token: str = "test-token") -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
            f"clusters: [{{name: kmock, cluster: {{server: '{self.url}'}}}}]\n"
            f"users: [{{name: test, user: {{token: {token}}}}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: test}}]\n")
        return path

    def _run(self) -> None:
        try:
            with entered(self.netns) if self.netns else contextlib.nullcontext():
                self.loop.run_until_complete(self._serve())
        except BaseException as err:
            self.error = err
        finally:
            self.started.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ApiServer() as api, kmock.Server(api, host=self.host) as server:
            for kind in KINDS.values():
                api.resources[f"{kind.api_version}/{kind.plural}"] = kmock.ResourceInfo(
                    kind=kind.kind, namespaced=kind.namespaced,
                    verbs={"create", "get", "list", "watch", "update", "patch", "delete"})
            self.api, self.url = api, str(server.url).rstrip("/")
            self.started.set()
            await self._stop.wait()
            await api.break_watches(expire=False)  # open streams would hold the shutdown
