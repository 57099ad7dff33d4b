"""The one entry point shared by the weft and weft-ipam plugins.

`run(env, stdin, handlers)` is the whole CNI process edge as a function (as
skel is in the Go libraries): the shim calls it in-process, the agent calls it
for requests that arrive on its socket, and tests call it directly. It never
raises: every failure becomes the spec's error object and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping

from weft.cni import versions
from weft.cni.config import CmdArgs, NetConf, decode, parse_env, parse_netconf
from weft.cni.errors import INTERNAL, CNIError

log = logging.getLogger("weft.cni")

Handler = Callable[[NetConf, CmdArgs], bytes]


def run(env: Mapping[str, str], stdin: bytes, handlers: Mapping[str, Handler]) -> tuple[int, bytes]:
    """Run one CNI command; returns (exit code, stdout)."""
    version = requested_version(stdin)
    try:
        command = env.get("CNI_COMMAND", "")
        if command == "VERSION":
            return 0, version_answer(stdin)
        args = parse_env(env)
        conf = parse_netconf(stdin)
        versions.require_command_allowed(args.command, conf.cni_version)
        _log_to(conf.log_file)
        return 0, handlers[args.command](conf, args)
    except CNIError as err:
        log.warning("%s failed: %s", _what(env), err)
        return 1, err.to_json(version)
    except Exception as err:  # the last line of defence: a clean error, never a traceback
        log.exception("%s failed unexpectedly", _what(env))
        wrapped = CNIError(INTERNAL, "weft failed unexpectedly",
                           f"{type(err).__name__}: {err}; see the weft log for details")
        return 1, wrapped.to_json(version)


def _what(env: Mapping[str, str]) -> str:
    """The request as the log names it, from what was given: 'ADD of <container>'."""
    command = env.get("CNI_COMMAND") or "a request"
    container = env.get("CNI_CONTAINERID")
    return f"{command} of {container}" if container else command


def version_answer(stdin: bytes) -> bytes:
    """VERSION: the versions weft speaks, answered in the version asked for."""
    asked: object = versions.LATEST
    with contextlib.suppress(CNIError):
        asked = decode(stdin).get("cniVersion") or versions.LATEST
    if not isinstance(asked, str):
        asked = versions.LATEST
    return json.dumps({"cniVersion": asked,
                       "supportedVersions": list(versions.SUPPORTED)}).encode() + b"\n"


def requested_version(stdin: bytes) -> str:
    """The version to answer errors in: the config's when weft speaks it."""
    try:
        asked = json.loads(stdin).get("cniVersion")
    except Exception:
        return versions.LATEST
    return asked if asked in versions.SUPPORTED else versions.LATEST


_configured: set[str] = set()


def _log_to(path: str) -> None:
    """Send weft's log to the config's log file (once per file per process).

    A CNI plugin's stderr goes nowhere useful under kubelet, so the in-process
    path logs to a file; the agent has its own handlers and skips this.
    """
    if path in _configured or logging.getLogger().handlers:
        return
    _configured.add(path)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError:
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    root = logging.getLogger("weft")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
