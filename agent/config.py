"""The agent's settings: flags, each with a WEFT_* environment variable behind it."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from weft.agent.vxlan import CHECKSUM_SETTINGS
from weft.cni.config import DEFAULT_DATASTORE_PATH, DEFAULT_SOCKET, DEFAULT_STATE_DIR
from weft.ipam.pools import DEFAULT_POOL


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    datastore: str = "local"
    datastore_path: str = DEFAULT_DATASTORE_PATH
    state_dir: str = DEFAULT_STATE_DIR
    socket: str = DEFAULT_SOCKET
    default_pool: str = DEFAULT_POOL["cidr"]
    underlay_interface: str = ""
    node_ip: str = ""
    vxlan_checksum_offload: str = "auto"
    cni_conf_dir: str = ""
    health_address: str = "0.0.0.0:9645"
    resync_seconds: float = 10.0
    kubeconfig: str = ""
    leak_check_seconds: float = 300.0
    cni_kubeconfig: str = ""
    cni_workers: int = 2
    network_policy: bool = True

    @property
    def datastore_location(self) -> str:
        """What `open_datastore` needs: a directory, or a kubeconfig ("" = in-cluster)."""
        return self.kubeconfig if self.datastore == "kubernetes" else self.datastore_path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentConfig:
        return cls(
            node_name=args.node_name or socket.gethostname(),
            datastore=args.datastore,
            datastore_path=args.datastore_path,
            state_dir=args.state_dir,
            socket=args.socket,
            default_pool=args.default_pool,
            underlay_interface=args.underlay_interface,
            node_ip=args.node_ip,
            vxlan_checksum_offload=args.vxlan_checksum_offload,
            cni_conf_dir=args.cni_conf_dir,
            health_address=args.health_address,
            resync_seconds=args.resync_seconds,
            kubeconfig=args.kubeconfig,
            leak_check_seconds=args.leak_check_seconds,
            cni_kubeconfig=args.cni_kubeconfig,
            cni_workers=args.cni_workers,
            network_policy=args.network_policy == "on",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--node-name", default=env("WEFT_NODE_NAME", ""),
                        help="this node's name (default: the hostname; env WEFT_NODE_NAME)")
    parser.add_argument("--datastore", choices=("local", "kubernetes"),
                        default=env("WEFT_DATASTORE", "local"),
                        help="where cluster state lives (env WEFT_DATASTORE)")
    add_datastore_path(parser)
    add_state_dir(parser)
    parser.add_argument("--socket", default=env("WEFT_SOCKET", DEFAULT_SOCKET),
                        help="the CNI socket to serve (env WEFT_SOCKET)")
    parser.add_argument("--default-pool", default=env("WEFT_DEFAULT_POOL", DEFAULT_POOL["cidr"]),
                        help="create this IPv4 pool when no IPPool exists; 'none' creates none "
                             "(env WEFT_DEFAULT_POOL)")
    parser.add_argument("--underlay-interface", default=env("WEFT_UNDERLAY_INTERFACE", ""),
                        help="the node's underlay interface (default: the default route's)")
    parser.add_argument("--node-ip", default=env("WEFT_NODE_IP", ""),
                        help="the node's underlay IPv4 address (default: the underlay's first)")
    parser.add_argument("--vxlan-checksum-offload", choices=CHECKSUM_SETTINGS,
                        default=env("WEFT_VXLAN_CHECKSUM_OFFLOAD", "auto"),
                        help="tx checksum offload on weft.vxlan: auto = on from kernel 5.7")
    parser.add_argument("--cni-conf-dir", default=env("WEFT_CNI_CONF_DIR", ""),
                        help="write 10-weft.conflist here once ready (e.g. /etc/cni/net.d)")
    parser.add_argument("--health-address", default=env("WEFT_HEALTH_ADDRESS", "0.0.0.0:9645"),
                        help="host:port for /healthz, /readyz and /metrics")
    parser.add_argument("--cni-kubeconfig", default=env("WEFT_CNI_KUBECONFIG", ""),
                        help="keep this kubeconfig for the CNI binary fresh from the agent's "
                             "service account token (e.g. /etc/cni/net.d/weft-kubeconfig)")
    parser.add_argument("--leak-check-seconds", type=float,
                        default=float(env("WEFT_LEAK_CHECK_SECONDS", "300")),
                        help="how often to release addresses of pods gone from API and node")
    parser.add_argument("--cni-workers", type=_workers,
                        default=env("WEFT_CNI_WORKERS", "2"),  # a string: argparse checks it
                        help="processes that serve the CNI socket beside the agent, so pods "
                             "are plumbed on that many more cores; 0 for none")
    parser.add_argument("--network-policy", choices=("on", "off"),
                        default=env("WEFT_NETWORK_POLICY", "on"),
                        help="enforce NetworkPolicy for this node's pods in nftables "
                             "(env WEFT_NETWORK_POLICY)")
    parser.add_argument("--resync-seconds", type=float,
                        default=float(env("WEFT_RESYNC_SECONDS", "10")),
                        help="full reconcile interval, besides reacting to changes")


def _workers(value: str) -> int:
    count = int(value) if value.strip().isdigit() else -1
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError(f"{value} CNI workers: choose 0 to 64")
    return count


def add_datastore_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datastore-path",
                        default=os.environ.get("WEFT_DATASTORE_PATH", DEFAULT_DATASTORE_PATH),
                        help="directory of the local datastore (env WEFT_DATASTORE_PATH)")
    parser.add_argument("--kubeconfig", default=os.environ.get("WEFT_KUBECONFIG", ""),
                        help="kubeconfig for the kubernetes datastore (default: in-cluster)")


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=os.environ.get("WEFT_STATE_DIR", DEFAULT_STATE_DIR),
                        help="this node's state directory (env WEFT_STATE_DIR)")
