"""The install step: a self-contained runtime that works where no Python is installed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import weft
from weft.agent import native
from weft.agent.install import CONFLIST_NAME, conflist, install, shim_kind
from weft.lab import netns

pytestmark = pytest.mark.integration


def hidden_python_mounts() -> list[str]:
    """Shell lines that hide every Python installation and weft's own source."""
    dirs = {os.path.realpath(sys.prefix), str(Path(weft.__file__).resolve().parents[1]),
            sysconfig.get_paths()["stdlib"]}
    dirs |= {str(p) for base in ("/usr/lib", "/usr/local/lib") for p in Path(base).glob("python3*")
             if p.is_dir()}
    files = [str(p) for base in ("/usr/bin", "/usr/local/bin") for p in Path(base).glob("python3*")
             if p.is_file() and not p.is_symlink()]
    outermost = [d for d in sorted(dirs) if os.path.isdir(d)
                 and not any(d != o and d.startswith(o + "/") for o in dirs)]
    lines = [f"mount -t tmpfs none {shlex.quote(d)}" for d in outermost]
    lines += [f"mount --bind /dev/null {shlex.quote(f)}" for f in files]
    return lines


def run_hidden(script: list[str], stdin: bytes = b"", env: dict | None = None
               ) -> subprocess.CompletedProcess[bytes]:
    body = "set -e\n" + "\n".join(hidden_python_mounts() + script)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", body],
                          input=stdin, capture_output=True, env=env, timeout=120)


def test_installed_binary_works_where_python_is_hidden(node, tmp_path):
    runtime, bin_dir, conf = tmp_path / "opt-weft", tmp_path / "cni-bin", tmp_path / "net.d"
    install(runtime, bin_dir, conf, datastore="local", progress=lambda _m: None)
    assert (runtime / "current").is_symlink()
    # The agent writes the conflist once it has reconciled: never the install step, or
    # the runtime would call the node's network ready before any route or NAT exists.
    assert not (conf / CONFLIST_NAME).exists()
    # With a C compiler the compiled shim, which execs the runtime's Python when no
    # agent answers, as here: every call below goes through both.
    expected = "compiled shim" if native.compiled_shim() else "Python shim"
    assert shim_kind(bin_dir / "weft") == shim_kind(bin_dir / "weft-ipam") == expected
    plugin = conflist(1400, datastore="local", nodeName=node.name,
                      datastorePath=str(node.datastore_path))["plugins"][0]

    no_python = run_hidden(["python3 -c pass 2>/dev/null && echo PYTHON-VISIBLE || true",
                            "echo CHECKED"])
    assert no_python.stdout.strip() == b"CHECKED", no_python.stderr.decode()

    version = run_hidden([f"{bin_dir}/weft"], b'{"cniVersion": "1.0.0"}',
                         env={"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/bin"})
    assert version.returncode == 0, version.stderr.decode()
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"

    pod = node.new_pod()
    conf_json = json.dumps({**plugin, "cniVersion": "1.0.0", "name": "weft",
                            "stateDir": str(node.state_dir),
                            "ipam": {"type": "weft-ipam",
                                     "pools": [{"cidr": "10.244.0.0/16"}]}}).encode()
    base = {"PATH": "/usr/sbin:/usr/bin:/bin", "CNI_CONTAINERID": "hidden",
            "CNI_NETNS": netns.path(pod), "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir)}
    add = run_hidden([f"nsenter --net={netns.path(node.name)} {bin_dir}/weft"], conf_json,
                     env={**base, "CNI_COMMAND": "ADD"})
    assert add.returncode == 0, add.stdout.decode() + add.stderr.decode()
    address = json.loads(add.stdout)["ips"][0]["address"]
    assert address.startswith("10.244.") and netns.link(pod, "eth0")["mtu"] == 1400
    delete = run_hidden([f"nsenter --net={netns.path(node.name)} {bin_dir}/weft"], conf_json,
                        env={**base, "CNI_COMMAND": "DEL"})
    assert delete.returncode == 0, delete.stdout.decode()
    assert node.links() == [] and node.allocations() == []


def test_a_second_install_swaps_the_runtime_atomically(tmp_path):
    runtime = tmp_path / "opt-weft"
    for _ in range(3):
        install(runtime, tmp_path / "bin", tmp_path / "net.d", datastore="local",
                progress=lambda _m: None)
    versions = sorted(p.name for p in (runtime / "versions").iterdir())
    assert len(versions) <= 2  # the current one and the one before
    assert os.readlink(runtime / "current").split("/")[-1] in versions
