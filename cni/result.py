"""CNI results: weft builds them in the 1.1.0 shape and converts on the way out.

0.3.x and 0.4.0 results carry a "version" on each IP and know nothing of
interface MTUs; 1.0.0 dropped "version"; 1.1.0 added "mtu" to interfaces.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from weft.cni import versions

Result = dict[str, Any]


def normalize(result: Any) -> Result:
    """Read a result of any supported version (a prevResult) into the 1.1.0 shape."""
    if not isinstance(result, dict):
        return {"interfaces": [], "ips": [], "routes": [], "dns": {}}
    out = copy.deepcopy(result)
    out.pop("cniVersion", None)
    for ip in out.get("ips", []) or []:
        ip.pop("version", None)
    for key, empty in (("interfaces", []), ("ips", []), ("routes", []), ("dns", {})):
        out.setdefault(key, empty)
        if out[key] is None:
            out[key] = empty
    return out


def convert(result: Result, version: str) -> Result:
    """Turn a 1.1.0-shaped result into the shape `version` defines."""
    out = copy.deepcopy(result)
    out["cniVersion"] = version
    old = versions.key(version) < versions.key("1.0.0")
    if versions.key(version) < versions.key("1.1.0"):
        for iface in out.get("interfaces", []):
            iface.pop("mtu", None)
    if old:
        for ip in out.get("ips", []):
            ip["version"] = "6" if ":" in ip["address"] else "4"
    return out


def encode(result: Result, version: str) -> bytes:
    return json.dumps(convert(result, version), indent=1).encode() + b"\n"


def merge(prev: Result | None, interfaces: list[dict], ips: list[dict],
          routes: list[dict]) -> Result:
    """Append this plugin's interfaces, IPs and routes to a previous result.

    `ips` point at interfaces by their index in `interfaces`; the indices are
    shifted past the interfaces `prev` already holds.
    """
    out = normalize(prev) if prev else normalize(None)
    offset = len(out["interfaces"])
    out["interfaces"].extend(interfaces)
    for ip in ips:
        shifted = dict(ip)
        if "interface" in shifted:
            shifted["interface"] += offset
        out["ips"].append(shifted)
    out["routes"].extend(routes)
    return out
