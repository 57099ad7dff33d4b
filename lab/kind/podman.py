"""How kind runs here: its podman provider, on the lab build's podman storage (where
the node image is), with this machine's podman settings in lab/kind/containers.conf.

Each cluster gets a podman network of its own (KIND_EXPERIMENTAL_PODMAN_NETWORK)
rather than kind's shared "kind", so that clusters can run side by side and deleting
one removes everything it made.
"""

from __future__ import annotations

from pathlib import Path

from weft.lab.kube import images, layout

CONTAINERS_CONF = Path(__file__).parent / "containers.conf"


def environment(network: str) -> dict[str, str]:
    """The environment of kind, podman and kubectl for a cluster on `network`."""
    return {**images.Podman(layout.CACHE).env, "CONTAINERS_CONF": str(CONTAINERS_CONF),
            "KIND_EXPERIMENTAL_PROVIDER": "podman", "KIND_EXPERIMENTAL_PODMAN_NETWORK": network}
