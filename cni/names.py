"""Names of the host-side interfaces weft creates."""

from __future__ import annotations

import hashlib

HOST_PREFIX = "weft"


def host_ifname(container_id: str, ifname: str) -> str:
    """`weft` + 11 hex digits: stable per attachment and within the kernel's 15 bytes.

    Hashing container ID and ifname together lets DEL find the link without any
    state and keeps two interfaces of one pod apart.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_PREFIX + digest[:11]
