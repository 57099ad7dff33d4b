"""Fixtures: a network namespace that plays the node, pods in it, and its agent.

Every name carries a random part, so `pytest -n auto` runs tests side by side;
every fixture removes what it made, also when the test fails, and then checks
that nothing of it is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from weft.agent.install import install_binaries
from weft.lab import netns, wiring
from weft.lab.libcni import Runtime

SYSTEM_CNI_PATH = "/usr/lib/cni"
NODE_ADDRESS = "172.31.255.1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and shutil.which("nsenter"):
        return
    skip = pytest.mark.skip(reason="integration tests need root and util-linux")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weft and weft-ipam installed as a node gets them: the fast shim."""
    directory = tmp_path_factory.mktemp("cni-bin")
    install_binaries(directory)
    return directory


@dataclass
class Node:
    """A namespace playing a kind node, with its own datastore and state."""

    name: str
    root: Path
    cni_bin: Path
    pods: list[str] = field(default_factory=list)
    agent: subprocess.Popen | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def datastore_path(self) -> Path:
        return self.root / "datastore"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "cni.sock"

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return netns.run(self.name, command, check=check)

    def netconf(self, cni_version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        """The weft plugin's config for this node, pools inline unless given."""
        ipam = extra.pop("ipam", {"type": "weft-ipam",
                                  "pools": [{"cidr": "10.244.0.0/16", "blockSize": 26}]})
        return {"cniVersion": cni_version, "name": "weft", "type": "weft", "mtu": 1450,
                "datastore": "local", "datastorePath": str(self.datastore_path),
                "stateDir": str(self.state_dir), "nodeName": self.name,
                "socket": str(self.socket), "ipam": ipam, **extra}

    def runtime(self, plugins: list[dict[str, Any]] | None = None,
                cni_version: str = "1.0.0") -> Runtime:
        conflist = {"cniVersion": cni_version, "name": "weft",
                    "plugins": plugins or [self.netconf(cni_version)]}
        return Runtime(conflist, [str(self.cni_bin), SYSTEM_CNI_PATH], self.root / "cache",
                       prefix=netns.prefix_command(self.name))

    def invoke(self, command: str, conf: dict[str, Any], container_id: str = "",
               pod: str = "", ifname: str = "eth0", plugin: str = "weft",
               env: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | None]:
        """Run a plugin binary in the node as libcni would; (exit code, decoded stdout)."""
        base = {"PATH": os.environ["PATH"], "CNI_COMMAND": command,
                "CNI_PATH": f"{self.cni_bin}:{SYSTEM_CNI_PATH}"}
        if container_id:
            base.update({"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname,
                         "CNI_NETNS": netns.path(pod) if pod else ""})
        proc = netns.run(self.name, [str(self.cni_bin / plugin)], check=False,
                         env=env if env is not None else base, input=json.dumps(conf).encode())
        assert b"Traceback" not in proc.stdout + proc.stderr, proc.stderr.decode()
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None

    def new_pod(self) -> str:
        name = f"{self.name}-p{len(self.pods)}"
        netns.create(name)
        self.pods.append(name)
        return name

    def start_agent(self, *flags: str) -> None:
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - closed with the process
        self.agent = netns.popen(self.name, [
            sys.executable, "-m", "weft", "agent", "--node-name", self.name, "--datastore-path",
            str(self.datastore_path), "--state-dir", str(self.state_dir),
            "--socket", str(self.socket), *flags],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.agent.poll() is None, (self.root / "agent.log").read_text()
            assert time.monotonic() < deadline, "agent did not open its socket"
            time.sleep(0.05)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the agent's samples `name` with these labels, from its /metrics."""
        fetch = ("import urllib.request as u; "
                 "print(u.urlopen('http://127.0.0.1:9645/metrics').read().decode())")
        text = self.run(sys.executable, "-c", fetch).stdout.decode()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def stop_agent(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None

    def links(self) -> list[str]:
        """The pods' host-side veths in the node."""
        with netns.iproute(self.name) as ipr:
            names = [link.get("ifname") for link in ipr.get_links()]
        return sorted(n for n in names if re.fullmatch(r"weft[0-9a-f]{11}", n))

    def allocations(self) -> list[dict[str, Any]]:
        """Pod allocations (the agent's tunnel address is not one)."""
        found = []
        for path in (self.state_dir / "ipam" / "blocks").glob("*.json"):
            found.extend(a for a in json.loads(path.read_text())["allocations"]
                         if a["container_id"])
        return found

    def cleanup(self) -> None:
        self.stop_agent()
        for pod in self.pods:
            netns.remove(pod)
        netns.remove(self.name)


@pytest.fixture
def node(tmp_path: Path, cni_bin: Path) -> Iterator[Node]:
    name = f"wt{uuid.uuid4().hex[:8]}"
    netns.create(name)
    the_node = Node(name, tmp_path, cni_bin)
    try:
        wiring.stub_underlay(name, NODE_ADDRESS)  # a default route, as a kind node has
        the_node.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        yield the_node
    finally:
        the_node.cleanup()
        assert netns.listed(name) == [], f"namespaces of {name} were left behind"


MACHINE_DIRS = (Path("/var/lib/weft"), Path("/etc/cni/net.d"), Path("/opt/cni/bin"))


def _machine_files() -> dict[str, int]:
    """What weft could have put in the machine's own directories (path -> mtime):
    anything in /var/lib/weft, anything named for weft in the CNI directories (podman
    keeps its own lock and network there)."""
    found = {}
    for directory in MACHINE_DIRS:
        if directory.exists():
            found[str(directory)] = 0
            for path in directory.rglob("*"):
                if directory.name == "weft" or "weft" in path.name:
                    found[str(path)] = path.lstat().st_mtime_ns
    return found


@pytest.fixture(scope="session", autouse=True)
def machine_directories_untouched() -> Iterator[None]:
    """Tests make their own node directories: none may write to the machine's."""
    before = _machine_files()
    yield
    after = _machine_files()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == [], f"tests wrote to the machine's own directories: {changed}"
