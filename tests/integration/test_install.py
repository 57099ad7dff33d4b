"""The install step: a self-contained runtime that works where no Python is installed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import weft
from weft.agent import native, runtime
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


def test_the_runtime_needs_nothing_of_the_host_but_its_c_library(tmp_path):
    """A kind node has glibc and none of the other libraries Python loads (libssl,
    libffi, libsqlite3, libexpat...): run the runtime in a root that holds only it and
    glibc, and every extension module it has must load, and weft's CLI start."""
    root = tmp_path / "host"
    current = runtime.build(root / "opt" / "weft")
    inside = Path("/") / current.relative_to(root)
    with (current / "bin" / "python3").open("rb") as file:
        linker = ELFFile(file).get_section_by_name(".interp").data().rstrip(b"\0").decode()
    host = {Path(linker)} | {
        runtime.system_library(name) for elf in runtime.elf_files(current)
        for name, _ in runtime.needed_libraries(elf) if name.startswith(runtime.HOST_LIBRARIES)}
    for library in host:
        place = root / "lib" / library.name if str(library) != linker else root / linker[1:]
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, place)
    dynload = next(current.glob("lib/python3*/lib-dynload"))
    modules = sorted(p.name.split(".")[0] for p in dynload.glob("*.so"))
    check = f"import {', '.join(modules)}; import weft.cli; print('loaded', {len(modules)})"
    env = {"PATH": "/bin", "LD_LIBRARY_PATH": str(inside / "lib")}
    command = [shutil.which("chroot"), str(root), str(inside / "bin" / "python3"), "-c", check]
    proc = subprocess.run(command, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().split() == ["loaded", str(len(modules))]
    assert runtime.library_path(current) == str(current / "lib")
