"""A CNI runtime that invokes plugins exactly as libcni does.

For a conflist it runs each plugin binary from CNI_PATH in turn with the
CNI_* environment and the plugin's config on stdin, with `name`, `cniVersion`,
the previous plugin's result as `prevResult`, and `runtimeConfig` for the
capabilities the plugin declares. DEL runs the plugins in reverse with the
cached result; CHECK passes it too; GC passes `cni.dev/valid-attachments`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PluginError(Exception):
    """A plugin answered with the spec's error object (or crashed)."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str,
                 stdout: bytes) -> None:
        super().__init__(f"{plugin} {command} failed (code {code}): {msg}"
                         + (f": {details}" if details else ""))
        self.plugin, self.command, self.code = plugin, command, code
        self.msg, self.details, self.stdout = msg, details, stdout


@dataclass
class Runtime:
    """Runs a conflist's plugins; `prefix` runs them inside a node's namespace."""

    conflist: Mapping[str, Any]
    cni_path: Sequence[str]
    cache_dir: Path
    prefix: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def add(self, container_id: str, netns: str, ifname: str = "eth0",
            args: Mapping[str, str] | None = None,
            capability_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            conf = self._plugin_conf(plugin, result, capability_args)
            out = self.exec("ADD", conf, container_id, netns, ifname, args)
            result = json.loads(out)
        assert result is not None
        self._cache(container_id, ifname).parent.mkdir(parents=True, exist_ok=True)
        self._cache(container_id, ifname).write_text(json.dumps(
            {"result": result, "netns": netns, "args": dict(args or {}),
             "capabilityArgs": dict(capability_args or {})}))
        return result

    def delete(self, container_id: str, netns: str, ifname: str = "eth0",
               args: Mapping[str, str] | None = None) -> None:
        cached = self._cached(container_id, ifname)
        prev = cached.get("result")
        for plugin in reversed(self.conflist["plugins"]):
            conf = self._plugin_conf(plugin, prev, cached.get("capabilityArgs"))
            self.exec("DEL", conf, container_id, netns, ifname, args)
        self._cache(container_id, ifname).unlink(missing_ok=True)

    def check(self, container_id: str, netns: str, ifname: str = "eth0",
              args: Mapping[str, str] | None = None) -> None:
        cached = self._cached(container_id, ifname)
        for plugin in self.conflist["plugins"]:
            conf = self._plugin_conf(plugin, cached.get("result"), cached.get("capabilityArgs"))
            self.exec("CHECK", conf, container_id, netns, ifname, args)

    def gc(self, valid: Sequence[tuple[str, str]]) -> None:
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        for plugin in self.conflist["plugins"]:
            conf = {**self._plugin_conf(plugin, None, None),
                    "cni.dev/valid-attachments": attachments}
            self.exec("GC", conf, "", "", "", None)

    def status(self) -> None:
        for plugin in self.conflist["plugins"]:
            self.exec("STATUS", self._plugin_conf(plugin, None, None), "", "", "", None)

    def exec(self, command: str, conf: Mapping[str, Any], container_id: str, netns: str,
             ifname: str, args: Mapping[str, str] | None) -> bytes:
        """Run one plugin binary; raise PluginError on a non-zero exit."""
        plugin = conf["type"]
        binary = self.find(plugin)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **self.env,
               "CNI_COMMAND": command, "CNI_PATH": os.pathsep.join(self.cni_path)}
        if command not in ("GC", "STATUS", "VERSION"):
            env.update({"CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                        "CNI_IFNAME": ifname,
                        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in (args or {}).items())})
        proc = subprocess.run([*self.prefix, binary], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=120)
        if proc.returncode != 0:
            try:
                err = json.loads(proc.stdout)
            except ValueError:
                err = {"code": -1, "msg": proc.stderr.decode(errors="replace").strip()}
            raise PluginError(plugin, command, err.get("code", -1), err.get("msg", ""),
                              err.get("details", ""), proc.stdout)
        return proc.stdout

    def find(self, plugin: str) -> str:
        for directory in self.cni_path:
            candidate = os.path.join(directory, plugin)
            if os.access(candidate, os.X_OK):
                return candidate
        raise FileNotFoundError(f"CNI plugin {plugin!r} not found in {list(self.cni_path)}")

    def _plugin_conf(self, plugin: Mapping[str, Any], prev: Mapping[str, Any] | None,
                     capability_args: Mapping[str, Any] | None) -> dict[str, Any]:
        conf = {**plugin, "cniVersion": self.conflist["cniVersion"],
                "name": self.conflist["name"]}
        if prev is not None:
            conf["prevResult"] = prev
        runtime = {cap: capability_args[cap]
                   for cap, on in (plugin.get("capabilities") or {}).items()
                   if on and capability_args and cap in capability_args}
        if runtime:
            conf["runtimeConfig"] = runtime
        return conf

    def _cache(self, container_id: str, ifname: str) -> Path:
        return self.cache_dir / f"{self.conflist['name']}-{container_id}-{ifname}.json"

    def _cached(self, container_id: str, ifname: str) -> dict[str, Any]:
        try:
            return json.loads(self._cache(container_id, ifname).read_text())
        except FileNotFoundError:
            return {}
