"""Parse what the runtime hands a plugin: the CNI_* environment and the network config.

Every check here raises a `CNIError` with the spec's code and a message that names
the bad field and the fix, before anything on the machine is touched.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weft.cni import versions
from weft.cni.errors import (
    CONTAINER_UNKNOWN,
    DECODING_FAILURE,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    CNIError,
)

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
# Commands that act on one attachment and so need the container's identity.
ATTACHMENT_COMMANDS = ("ADD", "DEL", "CHECK")

DEFAULT_SOCKET = "/run/weft/cni.sock"
DEFAULT_STATE_DIR = "/var/lib/weft"
DEFAULT_DATASTORE_PATH = "/var/lib/weft/datastore"
DEFAULT_KUBECONFIG = "/etc/cni/net.d/weft-kubeconfig"
DEFAULT_MTU = 1450
DATASTORES = ("local", "kubernetes")

# The spec's rule for container IDs, and the kernel's for interface names.
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
IFNAMSIZ = 15


@dataclass(frozen=True)
class CmdArgs:
    """The CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def handle(self) -> str:
        """What IPAM keys an attachment by: container ID and ifname together."""
        return f"{self.container_id}/{self.ifname}"

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


@dataclass(frozen=True)
class NetConf:
    """A network config for the weft plugin (or weft-ipam), with defaults applied."""

    cni_version: str
    name: str
    type: str
    mtu: int
    datastore: str
    datastore_path: str
    state_dir: str
    node_name: str
    socket: str
    log_file: str
    ipam: Mapping[str, Any]
    prev_result: Mapping[str, Any] | None
    raw: Mapping[str, Any]


def decode(stdin: bytes) -> dict[str, Any]:
    """Decode the config JSON; code 6 when it is not a JSON object."""
    try:
        raw = json.loads(stdin or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CNIError(
            DECODING_FAILURE,
            "failed to decode the network config",
            f"stdin must be the network config as a JSON object: {err}",
        ) from err
    if not isinstance(raw, dict):
        raise CNIError(
            DECODING_FAILURE,
            "failed to decode the network config",
            f"stdin must be a JSON object, got {type(raw).__name__}",
        )
    return raw


def parse_netconf(stdin: bytes, env: Mapping[str, str] | None = None) -> NetConf:
    """Decode and validate a network config, applying weft's defaults."""
    raw = decode(stdin)
    version = versions.require_supported(raw.get("cniVersion"))
    name = _required_str(raw, "name")
    plugin_type = _required_str(raw, "type")
    ipam = raw.get("ipam", {})
    if not isinstance(ipam, dict):
        raise _invalid("ipam", "must be an object such as {\"type\": \"weft-ipam\"}")
    datastore = _optional_str(raw, "datastore", "local")
    if datastore not in DATASTORES:
        raise _invalid("datastore", f"is {datastore!r}; use one of {', '.join(DATASTORES)}")
    mtu = raw.get("mtu", DEFAULT_MTU)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 576 <= mtu <= 65535:
        raise _invalid("mtu", f"is {mtu!r}; use a whole number from 576 to 65535")
    state_dir = _optional_str(raw, "stateDir", DEFAULT_STATE_DIR)
    # weft-ipam under another plugin takes its stateDir from the ipam section (which
    # wins, as for every IPAM setting); the log goes where the state goes.
    ipam_state = ipam.get("stateDir")
    log_dir = ipam_state if isinstance(ipam_state, str) and ipam_state else state_dir
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _invalid("prevResult", "must be a result object")
    return NetConf(
        cni_version=version,
        name=name,
        type=plugin_type,
        mtu=mtu,
        datastore=datastore,
        datastore_path=_optional_str(raw, "datastorePath", DEFAULT_DATASTORE_PATH),
        state_dir=state_dir,
        node_name=_optional_str(raw, "nodeName", "") or socket.gethostname(),
        socket=_optional_str(raw, "socket", DEFAULT_SOCKET),
        log_file=_optional_str(raw, "logFile", os.path.join(log_dir, "cni.log")),
        ipam=ipam,
        prev_result=prev,
        raw=raw,
    )


def parse_env(env: Mapping[str, str]) -> CmdArgs:
    """Read and check the CNI_* variables the command needs (code 4 when wrong)."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        what = f"is {command!r}" if command else "is not set"
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"CNI_COMMAND {what}",
            f"set CNI_COMMAND to one of {', '.join(COMMANDS)}",
        )
    if command not in ATTACHMENT_COMMANDS:
        return CmdArgs(command=command, path=env.get("CNI_PATH", ""))
    container_id = _required_env(env, "CNI_CONTAINERID", "the container's ID")
    if not _CONTAINER_ID.match(container_id):
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"CNI_CONTAINERID {container_id!r} is not a valid container ID",
            "it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
        )
    ifname = _required_env(env, "CNI_IFNAME", "the interface name inside the container, e.g. eth0")
    check_ifname(ifname)
    netns = env.get("CNI_NETNS", "")
    if command != "DEL":
        if not netns:
            raise CNIError(
                INVALID_ENVIRONMENT,
                "CNI_NETNS is not set",
                "set CNI_NETNS to the path of the container's network namespace",
            )
        if not os.path.exists(netns):
            raise CNIError(
                CONTAINER_UNKNOWN,
                f"network namespace {netns} does not exist",
                "CNI_NETNS must name the container's network namespace; the container may be gone",
            )
    return CmdArgs(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=env.get("CNI_PATH", ""),
    )


def parse_cni_args(value: str) -> dict[str, str]:
    """CNI_ARGS is `K=V;K=V`; malformed pairs are an environment error."""
    pairs: dict[str, str] = {}
    for item in filter(None, value.split(";")):
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise CNIError(
                INVALID_ENVIRONMENT,
                f"CNI_ARGS holds a malformed pair {item!r}",
                "CNI_ARGS must be KEY=VALUE pairs separated by ';'",
            )
        pairs[name] = val
    return pairs


def check_ifname(ifname: str) -> None:
    """The kernel's rules for interface names: 1-15 bytes, no '/', ':' or whitespace."""
    problem = ""
    if len(ifname.encode()) > IFNAMSIZ:
        problem = f"is {len(ifname.encode())} bytes; the kernel allows at most {IFNAMSIZ}"
    elif ifname in (".", ".."):
        problem = "is not allowed"
    elif any(ch in ifname for ch in "/:") or any(ch.isspace() for ch in ifname):
        problem = "may not contain '/', ':' or whitespace"
    if problem:
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"CNI_IFNAME {ifname!r} {problem}",
            "set CNI_IFNAME to a valid interface name such as eth0",
        )


def _required_env(env: Mapping[str, str], name: str, meaning: str) -> str:
    value = env.get(name, "")
    if not value:
        raise CNIError(INVALID_ENVIRONMENT, f"{name} is not set", f"set {name} to {meaning}")
    return value


def _required_str(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise _invalid(key, "is missing; the network config needs a non-empty string here")
    return value


def _optional_str(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise _invalid(key, f"is {value!r}; it must be a string")
    return value


def _invalid(key: str, problem: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid network config: {key!r} {problem}")
