"""What a running lab remembers between commands: its plan, pods and processes.

Kept in /run/weft-lab/<name>/ (tmpfs, like the namespaces it describes), next to
each node's datastore view, state directory, CNI config and agent log.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from weft.files import write_atomically
from weft.lab import topology

LAB_ROOT = Path(os.environ.get("WEFT_LAB_ROOT", "/run/weft-lab"))


@dataclass
class LabState:
    name: str
    nodes: int
    subnets: int
    pods_per_node: int
    runtime: str = "netns"
    pods: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    removed_nodes: list[str] = field(default_factory=list)
    ready: bool = False
    # A Kubernetes lab's binaries, and what it saw while it was built.
    kube_bin_dir: str = ""
    observed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def nodes_present(self) -> list[topology.NodePlan]:
        return [n for n in self.plan.nodes if n.name not in self.removed_nodes]

    @property
    def plan(self) -> topology.LabPlan:
        return topology.plan(self.name, self.nodes, self.subnets, self.pods_per_node)

    @property
    def root(self) -> Path:
        return lab_root(self.name)

    @property
    def datastore(self) -> Path:
        return self.root / "datastore"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def save(self) -> None:
        write_atomically(self.root / "lab.json", json.dumps(asdict(self), indent=1).encode())


def lab_root(name: str) -> Path:
    return LAB_ROOT / name


def load(name: str) -> LabState | None:
    try:
        raw = json.loads((lab_root(name) / "lab.json").read_text())
    except FileNotFoundError:
        return None
    return LabState(**raw)
