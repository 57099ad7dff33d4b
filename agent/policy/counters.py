"""`weft_policy_denied_packets_total`: the table's per-pod counters, read at each scrape."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from weft.agent.policy.model import EGRESS, INGRESS, Pod
from weft.agent.policy.render import FAMILY, TABLE, counter_name

log = logging.getLogger(__name__)


def read_counters() -> dict[str, int]:
    """Packets per counter in weft's table; empty when there is no table."""
    proc = subprocess.run(["nft", "-j", "list", "counters", "table", FAMILY, TABLE],
                          capture_output=True, timeout=10)
    if proc.returncode != 0:
        return {}
    found = {}
    for item in json.loads(proc.stdout or b"{}").get("nftables", []):
        counter = item.get("counter")
        if counter:
            found[counter["name"]] = int(counter.get("packets", 0))
    return found


class DeniedPackets(Collector):
    def __init__(self, local_pods: Callable[[], dict[str, Pod]]) -> None:
        self.local_pods = local_pods

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("weft_policy_denied_packets", "Packets NetworkPolicy "
                                     "refused, per pod of this node and direction",
                                     labels=["namespace", "pod", "direction"])
        try:
            counters = read_counters()
        except (OSError, subprocess.SubprocessError, ValueError) as err:
            log.warning("could not read the policy counters: %s", err)
            counters = {}
        for address, pod in sorted(self.local_pods().items()):
            for direction in (INGRESS, EGRESS):
                packets = counters.get(counter_name(direction, address))
                if packets is not None:
                    family.add_metric([pod.namespace, pod.name, direction], packets)
        yield family
