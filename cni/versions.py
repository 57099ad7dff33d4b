"""The CNI spec versions weft speaks, and what each of them allows."""

from __future__ import annotations

from weft.cni.errors import INCOMPATIBLE_VERSION, CNIError

SUPPORTED = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]

# The first version that defines each command; older configs may not use it.
INTRODUCED = {"ADD": "0.3.1", "DEL": "0.3.1", "VERSION": "0.3.1", "CHECK": "0.4.0",
              "GC": "1.1.0", "STATUS": "1.1.0"}


def key(version: str) -> tuple[int, ...]:
    """Order versions numerically ("0.10.0" after "0.4.0")."""
    return tuple(int(part) for part in version.split("."))


def require_supported(version: object) -> str:
    """Return `version` if weft speaks it, else raise the spec's code 1."""
    if not isinstance(version, str) or version not in SUPPORTED:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}",
            f"weft speaks {', '.join(SUPPORTED)}; set the network config's cniVersion to one",
        )
    return version


def require_command_allowed(command: str, version: str) -> None:
    """CHECK needs 0.4.0+, GC and STATUS need 1.1.0 (the spec's rule for old configs)."""
    first = INTRODUCED[command]
    if key(version) < key(first):
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"{command} is not defined for cniVersion {version}",
            f"{command} needs cniVersion {first} or newer in the network config",
        )
