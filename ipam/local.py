"""The `local` datastore: Kubernetes objects as YAML files in a directory.

Layout: `<root>/<plural>/<name>.yaml`, and `<root>/<plural>/<namespace>/<name>.yaml`
for namespaced kinds. Files are written to a temporary name and then linked
(create: fails if the name exists, so it is the claim lock) or renamed (apply)
into place, so a reader never sees half a file. Deleting an object deletes the
objects whose ownerReferences name it, as the Kubernetes garbage collector does (for
the owners weft's objects have: Nodes own IPAMBlocks; deleting anything else scans
nothing, so deleting 1,000 policies is not 1,000 scans of the whole store).

A file is parsed once: what it held is kept by its inode, size and modification
time, so a reconcile over 2,000 objects reads YAML only for those that changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml

from weft.ipam.datastore import (
    KINDS,
    AlreadyExists,
    DatastoreError,
    Kind,
    NotFound,
    Object,
    kind_of,
    name_of,
)
from weft.ipam.local_watch import Watch

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
OWNED = {"Node": ("IPAMBlock",)}  # owner kind -> the kinds whose objects it may own
PARSED_FILES = 50_000  # files whose parse is kept, the least recently read go first


class LocalStore:
    """A directory of YAML objects; safe for several processes at once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # path -> ((inode, size, mtime), the object as JSON: each read decodes a copy of
        # its own, which callers may change)
        self._parsed: OrderedDict[Path, tuple[tuple[int, int, int], str]] = OrderedDict()
        self._parsed_lock = threading.Lock()

    def get(self, kind: str, name: str, namespace: str = "") -> Object | None:
        return self._read(self._path(KINDS[kind], name, namespace))

    def list(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        spec = KINDS[kind]
        base = self.root / spec.plural
        if spec.namespaced:
            pattern = f"{namespace}/*.yaml" if namespace else "*/*.yaml"
        else:
            pattern = "*.yaml"
        objects = (self._read(path) for path in sorted(base.glob(pattern)))
        return [obj for obj in objects if obj is not None
                and (not node or (obj.get("spec") or {}).get("nodeName") == node)]

    def create(self, obj: Object) -> Object:
        path, stored = self._prepare(obj)
        tmp = self._write_temp(path, stored)
        try:
            os.link(tmp, path)
        except FileExistsError as err:
            raise AlreadyExists(f"{stored['kind']} {path.stem} already exists") from err
        finally:
            os.unlink(tmp)
        return stored

    def apply(self, obj: Object) -> Object:
        path, stored = self._prepare(obj)
        current = self._read(path)
        if current is not None:
            # Keep identity and creation time, as an update through the API would.
            for key in ("uid", "creationTimestamp"):
                if key in current.get("metadata", {}):
                    stored["metadata"][key] = current["metadata"][key]
        os.replace(self._write_temp(path, stored), path)
        return stored

    def delete(self, kind: str, name: str, namespace: str = "") -> bool:
        spec = KINDS[kind]
        path = self._path(spec, name, namespace)
        current = self._read(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        uid = (current or {}).get("metadata", {}).get("uid")
        self._delete_dependents(kind, name, uid)
        return True

    def annotate(self, kind: str, name: str, annotations: dict[str, str],
                 namespace: str = "") -> None:
        current = self.get(kind, name, namespace)
        if current is None:
            raise NotFound(f"{kind} {name} does not exist")
        meta = current.setdefault("metadata", {})
        merged = {**(meta.get("annotations") or {}), **annotations}
        if merged != meta.get("annotations"):
            meta["annotations"] = merged
            self.apply(current)

    def set_status(self, kind: str, name: str, status: dict, namespace: str = "") -> None:
        current = self.get(kind, name, namespace)
        if current is None:
            raise NotFound(f"{kind} {name} does not exist")
        merged = {**(current.get("status") or {}), **status}
        if merged != current.get("status"):
            current["status"] = merged
            self.apply(current)

    def revision(self, kinds: Sequence[str]) -> str:
        """Names, sizes and modification times of the kinds' files: cheap to poll."""
        parts = []
        for kind in kinds:
            base = self.root / KINDS[kind].plural
            with contextlib.suppress(FileNotFoundError):
                for path in sorted(base.rglob("*.yaml")):
                    with contextlib.suppress(FileNotFoundError):
                        st = path.stat()
                        parts.append(f"{path.relative_to(self.root)}:{st.st_size}:"
                                     f"{st.st_mtime_ns}")
        return "|".join(parts)

    def wait(self, kinds: Sequence[str], since: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            with Watch(self._directories(kinds)) as watch:
                now = self.revision(kinds)
                left = deadline - time.monotonic()
                if now != since or left <= 0:
                    return now
                watch.wait(left)

    def cached(self, kind: str, namespace: str = "", node: str = "") -> list[Object]:
        return self.list(kind, namespace, node)  # the files are the cache: parsed once

    def _directories(self, kinds: Sequence[str]) -> list[Path]:
        """The root, each kind's directory and its namespaces' directories."""
        found = [self.root]
        for kind in kinds:
            base = self.root / KINDS[kind].plural
            found.append(base)
            if KINDS[kind].namespaced:
                with contextlib.suppress(FileNotFoundError):
                    found += [path for path in base.iterdir() if path.is_dir()]
        return found

    def _delete_dependents(self, kind: str, name: str, uid: str | None) -> None:
        for dependent_kind in OWNED.get(kind, ()):
            for obj in self.list(dependent_kind):
                for ref in obj.get("metadata", {}).get("ownerReferences") or []:
                    if ref.get("kind") == kind and ref.get("name") == name and (
                        not uid or not ref.get("uid") or ref.get("uid") == uid
                    ):
                        namespace, dep_name = name_of(obj)
                        self.delete(dependent_kind, dep_name, namespace)
                        break

    def _prepare(self, obj: Object) -> tuple[Path, Object]:
        spec = kind_of(obj)
        namespace, name = name_of(obj)
        stored = dict(obj)
        stored["apiVersion"] = obj.get("apiVersion") or spec.api_version
        meta = dict(obj.get("metadata") or {})
        if spec.namespaced:
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["resourceVersion"] = str(time.time_ns())
        stored["metadata"] = meta
        return self._path(spec, name, namespace), stored

    def _path(self, spec: Kind, name: str, namespace: str) -> Path:
        if "/" in name or name.startswith("."):
            raise DatastoreError(f"{spec.kind} name {name!r} is not a valid object name")
        base = self.root / spec.plural
        if spec.namespaced:
            base = base / (namespace or "default")
        return base / f"{name}.yaml"

    def _write_temp(self, path: Path, obj: Object) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # not *.yaml: unlisted
        with os.fdopen(fd, "w") as out:
            yaml.dump(obj, out, Dumper=_Dumper, sort_keys=False)
        return tmp

    def _read(self, path: Path) -> Object | None:
        try:
            with open(path) as stream:
                st = os.fstat(stream.fileno())
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                with self._parsed_lock:
                    held = self._parsed.get(path)
                    if held is not None and held[0] == key:
                        self._parsed.move_to_end(path)
                        return json.loads(held[1])
                obj = yaml.load(stream, Loader=_Loader)
        except FileNotFoundError:
            return None
        if not isinstance(obj, dict):
            return None
        try:
            text = json.dumps(obj)
        except TypeError:
            return obj  # a hand-written file with a YAML date in it: parsed every time
        with self._parsed_lock:
            self._parsed[path] = (key, text)
            if len(self._parsed) > PARSED_FILES:
                self._parsed.popitem(last=False)
        return obj
