"""The lab's plan: which namespaces, links and addresses a cluster of N nodes gets.

Pure: computed from the lab's name and sizes, so `up`, `down`, `status` and the
tests all agree on names without asking the kernel.

    internet (203.0.113.10) --- router --- switch 0 --- node1, node2, ...
                                      \\--- switch 1 --- node3, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import netaddr

INTERNET_ADDRESS = "203.0.113.10"  # TEST-NET-3: exists only inside the lab
INTERNET_LINK = netaddr.IPNetwork("198.51.100.0/30")
UNDERLAY = netaddr.IPNetwork("172.18.0.0/16")
POD_POOL = "10.244.0.0/16"
MAX_NODES = 200
MAX_SUBNETS = 50


@dataclass(frozen=True)
class Subnet:
    index: int
    cidr: netaddr.IPNetwork
    switch: str

    @property
    def gateway(self) -> str:
        return str(self.cidr[1])


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int
    subnet: Subnet
    address: str

    @property
    def netns(self) -> str:
        return self.name


@dataclass(frozen=True)
class PodPlan:
    name: str
    node: str

    @property
    def netns(self) -> str:
        return self.name


@dataclass(frozen=True)
class LabPlan:
    name: str
    subnets: tuple[Subnet, ...]
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]

    @property
    def router(self) -> str:
        return f"{self.name}-router"

    @property
    def internet(self) -> str:
        return f"{self.name}-inet"

    @property
    def router_internet_address(self) -> str:
        return str(INTERNET_LINK[1])

    @property
    def internet_link_address(self) -> str:
        return str(INTERNET_LINK[2])

    def namespaces(self) -> list[str]:
        """Every namespace of the lab, infrastructure first."""
        return ([self.internet, self.router] + [s.switch for s in self.subnets]
                + [n.netns for n in self.nodes] + [p.netns for p in self.pods])

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)


def plan(name: str, nodes: int = 3, subnets: int = 2, pods_per_node: int = 2) -> LabPlan:
    """Spread `nodes` over `subnets` in order: 3 over 2 puts node1 and node2 together."""
    check_name(name)
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes must be from 1 to {MAX_NODES}, not {nodes}")
    if not 1 <= subnets <= min(nodes, MAX_SUBNETS):
        raise ValueError(f"--subnets must be from 1 to the number of nodes ({nodes}), "
                         f"not {subnets}")
    if not 0 <= pods_per_node <= 60:
        raise ValueError(f"--pods-per-node must be from 0 to 60, not {pods_per_node}")
    nets = tuple(Subnet(s, netaddr.IPNetwork(f"172.18.{s + 1}.0/24"), f"{name}-sw{s}")
                 for s in range(subnets))
    node_plans = []
    for i in range(nodes):
        subnet = nets[i * subnets // nodes]
        node_plans.append(NodePlan(f"{name}-node{i + 1}", i + 1, subnet,
                                   str(subnet.cidr[10 + i])))
    pod_plans = tuple(PodPlan(f"{n.name}-pod{p}", n.name)
                      for n in node_plans for p in range(pods_per_node))
    return LabPlan(name, nets, tuple(node_plans), pod_plans)


def check_name(name: str) -> None:
    """Names become namespace and file names; keep them short and plain."""
    if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name):
        raise ValueError(f"lab name {name!r} must be 1-12 lower-case letters and digits, "
                         "starting with a letter")


def owned_by(name: str, netns: str) -> bool:
    """Does a namespace name belong to lab `name` (and not to a lab named like it)? Lab
    names have no '-', so everything after "<name>-" is the lab's: its own namespaces
    and those of pods added by name (`build.add_pod`)."""
    return re.fullmatch(rf"{re.escape(name)}-[a-z0-9][a-z0-9-]*", netns) is not None
