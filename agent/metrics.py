"""The agent's Prometheus metrics and its /healthz, /readyz and /metrics endpoints."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class Metrics:
    """One registry per agent, so several agents can live in one test process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cni_requests = Counter("weft_cni_requests_total", "CNI requests served by the "
                                    "agent", ["plugin", "command", "result"],
                                    registry=self.registry)
        self.cni_latency = Histogram("weft_cni_request_duration_seconds", "Time to serve a "
                                     "CNI request", ["command"], registry=self.registry,
                                     buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1, 5))
        self.blocks = Gauge("weft_blocks", "IPAM blocks this node owns", registry=self.registry)
        self.allocations = Gauge("weft_allocations", "Addresses allocated on this node",
                                 registry=self.registry)
        self.routes = Gauge("weft_routes", "Routes the agent holds", ["kind"],
                            registry=self.registry)
        self.reconcile_seconds = Histogram("weft_reconcile_duration_seconds", "Time of one "
                                           "reconcile of routes, tunnel and NAT",
                                           registry=self.registry)
        self.reconcile_errors = Counter("weft_reconcile_errors_total", "Reconcile steps that "
                                        "failed", registry=self.registry)
        self.reconciles = Counter("weft_reconciles_total", "Reconciles, by what started "
                                  "them: the periodic resync or a change", ["trigger"],
                                  registry=self.registry)

        self.policy_sync_seconds = Histogram(
            "weft_policy_sync_duration_seconds", "Time of one NetworkPolicy sync: model, "
            "nftables transaction, conntrack", registry=self.registry,
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.policies = Gauge("weft_network_policies", "NetworkPolicies in the cluster",
                              registry=self.registry)
        self.policy_selected_pods = Gauge("weft_policy_selected_pods", "This node's pods "
                                          "isolated by some policy", ["direction"],
                                          registry=self.registry)

    def observe_cni(self, plugin: str, command: str, code: int, seconds: float) -> None:
        self.cni_requests.labels(plugin, command, "ok" if code == 0 else "error").inc()
        self.cni_latency.labels(command).observe(seconds)


def serve(address: str, registry: CollectorRegistry,
          ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Start the HTTP endpoints on host:port in a background thread."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok\n")
            elif self.path == "/readyz":
                is_ready = ready()
                self._send(200 if is_ready else 503, b"ready\n" if is_ready else
                           b"not ready: first reconcile not done\n")
            elif self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving /healthz, /readyz and /metrics on %s", address)
    return server
