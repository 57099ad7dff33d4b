"""How kind runs here: its podman provider, on the lab build's podman storage (where
the node image is), with this machine's podman settings in lab/kind/containers.conf.

Each cluster gets a podman network of its own (KIND_EXPERIMENTAL_PODMAN_NETWORK)
rather than kind's shared "kind", so that clusters can run side by side and deleting
one removes everything it made. netavark keeps its iptables chains after its last
network is gone; delete_network() removes them then.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from weft.lab.kube import images, layout

CONTAINERS_CONF = Path(__file__).parent / "containers.conf"
# podman's own network, which is not netavark's to program until a container uses it.
DEFAULT_NETWORK = "podman"
NETAVARK_CHAIN_PREFIX = ("NETAVARK-", "NETAVARK_")


def environment(network: str) -> dict[str, str]:
    """The environment of kind, podman and kubectl for a cluster on `network`."""
    return {**images.Podman(layout.CACHE).env, "CONTAINERS_CONF": str(CONTAINERS_CONF),
            "KIND_EXPERIMENTAL_PROVIDER": "podman", "KIND_EXPERIMENTAL_PODMAN_NETWORK": network}


def delete_network(network: str) -> None:
    """Remove a cluster's network (after `kind delete cluster`), and netavark's chains
    when no other netavark network is left."""
    env = environment(network)
    subprocess.run(["podman", "network", "rm", "-f", network], env=env, capture_output=True)
    left = subprocess.run(["podman", "network", "ls", "--format", "{{.Name}}"], env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    if set(left) - {DEFAULT_NETWORK}:
        return
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter"):
            _remove_chains(tool, table)


def _remove_chains(tool: str, table: str) -> None:
    rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    chains = [r.split()[1] for r in rules if r.startswith("-N ")
              and r.split()[1].startswith(NETAVARK_CHAIN_PREFIX)]
    for rule in rules:
        words = shlex.split(rule)
        if words[0] == "-A" and words[1] not in chains and words[-1] in chains:
            subprocess.run([tool, "-t", table, "-D", *words[1:]], check=True)
    for flag in ("-F", "-X"):
        for chain in chains:
            subprocess.run([tool, "-t", table, flag, chain], check=True)
