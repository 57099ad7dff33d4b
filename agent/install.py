"""Install weft's CNI binaries and network config on a node.

Each file is written beside its destination and renamed into place, so kubelet
never runs half a binary or reads half a config.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from weft.cni import shim

BINARIES = ("weft", "weft-ipam")
CONFLIST_NAME = "10-weft.conflist"


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def install_binaries(bin_dir: str | os.PathLike[str], python: str = sys.executable) -> list[Path]:
    """Write the shim as `weft` and `weft-ipam`, started with -S (no site: fast start)."""
    source = Path(shim.__file__).read_bytes()
    written = []
    for name in BINARIES:
        path = Path(bin_dir) / name
        write_atomically(path, f"#!{python} -S\n".encode() + source, 0o755)
        written.append(path)
    return written


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
