"""The agent's settings: flags, each with a WEFT_* environment variable behind it."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from weft.cni.config import DEFAULT_DATASTORE_PATH, DEFAULT_SOCKET, DEFAULT_STATE_DIR
from weft.ipam.pools import DEFAULT_POOL


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    datastore: str
    datastore_path: str
    state_dir: str
    socket: str
    default_pool: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentConfig:
        return cls(
            node_name=args.node_name or socket.gethostname(),
            datastore=args.datastore,
            datastore_path=args.datastore_path,
            state_dir=args.state_dir,
            socket=args.socket,
            default_pool=args.default_pool,
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


def add_datastore_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datastore-path",
                        default=os.environ.get("WEFT_DATASTORE_PATH", DEFAULT_DATASTORE_PATH),
                        help="directory of the local datastore (env WEFT_DATASTORE_PATH)")


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=os.environ.get("WEFT_STATE_DIR", DEFAULT_STATE_DIR),
                        help="this node's state directory (env WEFT_STATE_DIR)")
