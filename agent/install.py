"""Install weft's CNI binaries and network config on a node.

Each file is written beside its destination and renamed into place, so kubelet
never runs half a binary or reads half a config.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import py_compile
import shlex
import sys
from pathlib import Path
from typing import Any

from weft.agent import native
from weft.cni import shim
from weft.files import write_atomically

BINARIES = ("weft", "weft-ipam")
CONFLIST_NAME = "10-weft.conflist"
KUBECONFIG_NAME = "weft-kubeconfig"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def install_binaries(bin_dir: str | os.PathLike[str], python: str = sys.executable,
                     lib_dir: str | os.PathLike[str] | None = None,
                     library_path: str = "", compiled: bool = True) -> list[Path]:
    """Install `weft` and `weft-ipam`: the compiled shim where it can be built, else
    Python launchers of the same shim.

    The Python launchers always go to `<bin_dir>/.weft/`, where the compiled shim
    finds them when no agent answers. They start the interpreter with -SI (no
    site, no user paths: ~20 ms saved per pod here) and import the shim from
    `lib_dir` as byte code, so no pod pays for compiling it; the in-process
    fallback loads site itself. An interpreter that needs `library_path` (a
    shared libpython) gets a /bin/sh launcher that sets it.
    """
    private = Path(bin_dir) / ".weft"
    lib = Path(lib_dir) if lib_dir is not None else private
    module = lib / "weft_cni_shim.py"
    write_atomically(module, Path(shim.__file__).read_bytes())
    py_compile.compile(str(module), cfile=importlib.util.cache_from_source(str(module)),
                       doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    binary = native.compiled_shim() if compiled else None
    written = []
    for name in BINARIES:
        code = f"import sys; sys.path.insert(0, {str(lib)!r}); " \
               f"from weft_cni_shim import main; main({name!r})"
        if library_path:
            launcher = (f"#!/bin/sh\nLD_LIBRARY_PATH={shlex.quote(library_path)} "
                        f"exec {shlex.quote(python)} -SI -c {shlex.quote(code)}\n")
        else:
            launcher = f"#!{python} -SI\n" + code.replace("; ", "\n") + "\n"
        write_atomically(private / name, launcher.encode(), 0o755)
        path = Path(bin_dir) / name
        write_atomically(path, binary.read_bytes() if binary else launcher.encode(), 0o755)
        written.append(path)
    return written


def shim_kind(path: Path) -> str:
    """What an installed CNI binary is, for install messages."""
    with open(path, "rb") as binary:
        return "compiled shim" if binary.read(4) == b"\x7fELF" else "Python shim"


def conflist(mtu: int, **weft_settings: Any) -> dict[str, Any]:
    """weft's conflist: the weft plugin, then portmap for hostPorts."""
    weft: dict[str, Any] = {"type": "weft", "mtu": mtu, **weft_settings}
    weft.setdefault("datastore", "kubernetes")
    weft["ipam"] = {"type": "weft-ipam", **weft.get("ipam", {})}
    return {"cniVersion": "1.0.0", "name": "weft", "plugins": [
        weft, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}


def install_conflist(conf_dir: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    path = Path(conf_dir) / CONFLIST_NAME
    write_atomically(path, json.dumps(config, indent=2).encode() + b"\n")
    return path


def kubeconfig_from_service_account(path: Path, account: Path = SERVICE_ACCOUNT,
                                    server: str = "") -> Path:
    """A kubeconfig for the CNI binary, which runs on the host outside any pod.

    Made from the install container's service account (its token and CA) and the
    API server's address from the environment kubelet gives every pod.
    """
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    server = server or (f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}")
    if not host and not server.startswith("https://"):
        raise InstallError("KUBERNETES_SERVICE_HOST is not set: run the install step in a pod")
    try:
        token = (account / "token").read_text().strip()
        ca = base64.b64encode((account / "ca.crt").read_bytes()).decode()
    except OSError as err:
        raise InstallError(f"cannot read the service account in {account}: {err}") from err
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "weft",
              "clusters": [{"name": "local", "cluster": {
                  "server": server, "certificate-authority-data": ca}}],
              "users": [{"name": "weft-cni", "user": {"token": token}}],
              "contexts": [{"name": "weft", "context": {"cluster": "local",
                                                        "user": "weft-cni"}}]}
    write_atomically(path, json.dumps(config, indent=2).encode(), 0o600)
    return path


class InstallError(Exception):
    """The install step cannot go on; the message says why."""


def install(runtime_root: Path, bin_dir: Path, conf_dir: Path, *, datastore: str,
            progress=print) -> None:
    """The install step: the runtime, the CNI binaries and, for the kubernetes datastore,
    the CNI plugin's kubeconfig. Not the conflist: the agent writes it once its first
    reconcile is done, because containerd and CRI-O take a loadable conflist as "the
    node's network is ready" (the Node turns Ready and pods are scheduled to it)."""
    from weft.agent import runtime

    progress(f"copying a self-contained Python runtime to {runtime_root}")
    current = runtime.build(runtime_root)
    stable = runtime_root / "current"
    python = runtime.interpreter(stable)
    library = str(stable / "lib") if runtime.library_path(current) else ""
    for path in install_binaries(bin_dir, str(python), stable / "shim", library):
        progress(f"installed {path} ({shim_kind(path)})")
    if datastore == "kubernetes":
        path = kubeconfig_from_service_account(conf_dir / KUBECONFIG_NAME)
        progress(f"wrote {path}")
    progress(f"the agent writes {conf_dir / CONFLIST_NAME} when the node is ready")
