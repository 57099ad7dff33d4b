"""`weft`: the command line for people. Errors are one clear line, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from weft.agent import config as agent_config
from weft.agent.install import InstallError
from weft.agent.iptables import IptablesError
from weft.agent.underlay import UnderlayError
from weft.cni.errors import CNIError
from weft.ipam.datastore import DatastoreError, name_of
from weft.lab import cli as lab_cli

Command = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def _cmd_agent(args: argparse.Namespace) -> int:
    from weft.agent.main import cleanup, run

    config = agent_config.AgentConfig.from_args(args)
    return cleanup(config) if args.action == "cleanup" else run(config)


def _cmd_ipam_show(args: argparse.Namespace) -> int:
    import socket

    from weft.ipam.allocator import IPAM
    from weft.ipam.show import show

    if args.lab:
        return _ipam_show_lab(args.lab)
    node = args.node_name or socket.gethostname()
    ipam_dir = Path(args.state_dir) / "ipam"
    if args.datastore == "local" and not Path(args.datastore_path).exists() \
            and not ipam_dir.exists():
        raise UserError(f"nothing to show: no datastore in {args.datastore_path} and no IPAM "
                        f"state in {ipam_dir} (weft has not run here); for a lab give "
                        "--lab NAME, else --datastore-path and --state-dir")
    store = _store(args)
    sys.stdout.write(show(store, {node: IPAM(store, args.state_dir, node).read_blocks()}))
    return 0


def _ipam_show_lab(name: str) -> int:
    from weft.ipam.allocator import IPAM
    from weft.ipam.local import LocalStore
    from weft.ipam.show import show
    from weft.lab.state import load

    state = load(name)
    if state is None:
        raise UserError(f"no lab named {name!r} is up; start one with 'weft lab up'")
    if state.runtime == "kubernetes":
        raise UserError(f"lab {name!r} is a Kubernetes lab: its blocks are in "
                        f"'weft lab status --name {name}'")
    store = LocalStore(state.datastore)
    nodes = {n.name: IPAM(store, state.node_dir(n.name) / "state", n.name).read_blocks()
             for n in state.nodes_present}
    sys.stdout.write(show(store, nodes))
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    from weft.agent.policy import explain
    from weft.agent.policy.model import cluster_from_objects
    from weft.table import render

    store, where = _lab_store(args.lab) if args.lab else (_store(args), contextlib.nullcontext())
    with where:
        cluster, problems = cluster_from_objects(
            store.list("Pod"), store.list("Namespace"), store.list("NetworkPolicy"))
    for problem in problems:
        print(f"warning: ignoring {problem}", file=sys.stderr)
    if args.action == "show":
        pods = [p for p in cluster.pods if not p.host_network]
        sys.stdout.write(render(("pod", "ip", "ingress isolated by", "egress isolated by"),
                                explain.show(cluster, pods)))
        return 0
    source, destination = (_policy_address(cluster, a) for a in (args.source, args.destination))
    port, _, protocol = args.port.partition("/")
    protocol = (protocol or "TCP").upper()
    if not port.isdigit() or protocol not in ("TCP", "UDP", "SCTP"):
        raise UserError(f"{args.port} is not PORT/PROTO: give e.g. 80/TCP, 53/UDP or 9/SCTP")
    verdict = explain.explain(cluster, source, destination, protocol, int(port))
    print("\n".join(verdict.lines()))
    return 0 if verdict.allowed else 1


def _policy_address(cluster, given: str) -> str:
    import netaddr

    if "/" in given:
        pod = cluster.find(given)
        if pod is None or not pod.ip:
            raise UserError(f"pod {given} {'has no address yet' if pod else 'does not exist'}")
        return pod.ip
    try:
        return str(netaddr.IPAddress(given, version=4))
    except (netaddr.AddrFormatError, ValueError):
        raise UserError(f"{given} is neither namespace/name nor an IPv4 address") from None


def _lab_store(name: str):
    """A lab's datastore, and where to use it from (a Kubernetes lab's API server is
    reachable from its control plane's namespace only)."""
    from weft.cni.netns import entered
    from weft.ipam.local import LocalStore
    from weft.lab import netns
    from weft.lab.state import load

    state = load(name)
    if state is None:
        raise UserError(f"no lab named {name!r} is up; start one with 'weft lab up'")
    if state.runtime != "kubernetes":
        return LocalStore(state.datastore), contextlib.nullcontext()
    from weft.ipam.kubernetes import KubernetesStore
    from weft.lab.kube.cluster import kube_layout

    kube = kube_layout(state)  # the client connects at the first request, from inside
    return KubernetesStore(str(kube.admin_kubeconfig)), entered(netns.path(kube.control_plane))


def _load_objects(path: str) -> list[dict]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from err
    objects = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise UserError(f"{path}: every document must be a Kubernetes object")
        objects.extend(doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc])
    return objects


def _cmd_apply(args: argparse.Namespace) -> int:
    store = _store(args)
    for obj in _load_objects(args.filename):
        store.apply(obj)
        _namespace, name = name_of(obj)
        print(f"{obj['kind'].lower()}/{name} applied")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    store = _store(args)
    for obj in _load_objects(args.filename):
        namespace, name = name_of(obj)
        gone = store.delete(obj["kind"], name, namespace)
        print(f"{obj['kind'].lower()}/{name} {'deleted' if gone else 'not found'}")
    return 0


def _cmd_proxy(args: argparse.Namespace) -> int:
    import socket

    from weft.agent.proxy import main as proxy
    store = _store(args)
    node = args.node_name or socket.gethostname()
    if args.action == "show":
        sys.stdout.write(proxy.show(store, node, args.cluster_cidr))
        return 0
    if args.action == "cleanup":
        return proxy.cleanup()
    return proxy.run(store, node, args.cluster_cidr, args.health_address, args.min_sync_interval,
                     args.resync_seconds)


def _cmd_install(args: argparse.Namespace) -> int:
    from weft.agent.install import install

    install(Path(args.runtime_dir), Path(args.bin_dir), Path(args.conf_dir),
            datastore=args.datastore)
    return 0


def _cmd_install_cni(args: argparse.Namespace) -> int:
    from weft.agent.install import install_binaries, shim_kind

    for path in install_binaries(args.bin_dir):
        print(f"installed {path} ({shim_kind(path)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weft", description="Pod networking for Kubernetes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = sub.add_parser("agent", help="run the node agent (or: weft agent cleanup)")
    agent.add_argument("action", nargs="?", choices=("run", "cleanup"), default="run",
                       help="cleanup removes what weft made on this node")
    agent_config.add_arguments(agent)
    agent.set_defaults(func=_cmd_agent)

    proxy = sub.add_parser("proxy", help="run the service proxy (or: show, cleanup)")
    proxy.add_argument("action", nargs="?", choices=("run", "show", "cleanup"), default="run")
    _add_store_arguments(proxy)
    proxy.add_argument("--node-name", default=os.environ.get("WEFT_NODE_NAME", ""),
                       help="this node's name, for internalTrafficPolicy: Local")
    proxy.add_argument("--cluster-cidr", default=os.environ.get("WEFT_CLUSTER_CIDR", ""),
                       help="the pods' CIDR (default: the first IPv4 pool's)")
    proxy.add_argument("--health-address", default="0.0.0.0:9646",
                       help="host:port for /healthz, /readyz and /metrics")
    proxy.add_argument("--min-sync-interval", type=float, default=1.0,
                       help="batch changes: at most one sync per this many seconds")
    proxy.add_argument("--resync-seconds", type=float, default=60.0,
                       help="re-check every chain this often")
    proxy.set_defaults(func=_cmd_proxy)

    ipam = sub.add_parser("ipam", help="inspect IP address management")
    ipam_sub = ipam.add_subparsers(dest="ipam_command", required=True, metavar="COMMAND")
    show = ipam_sub.add_parser("show", help="print pools, blocks and allocations")
    _add_store_arguments(show)
    agent_config.add_state_dir(show)
    show.add_argument("--node-name", default="", help="whose allocations (default: hostname)")
    show.add_argument("--lab", default="", metavar="NAME",
                      help="a lab's datastore and every node's allocations")
    show.set_defaults(func=_cmd_ipam_show)

    policy = sub.add_parser("policy", help="inspect NetworkPolicy")
    policy_sub = policy.add_subparsers(dest="action", required=True, metavar="COMMAND")
    policy_show = policy_sub.add_parser("show", help="what isolates each pod")
    policy_explain = policy_sub.add_parser(
        "explain", help="whether a packet is allowed, and the policy and rule that decide")
    policy_explain.add_argument("source", metavar="SRC", help="namespace/name or address")
    policy_explain.add_argument("destination", metavar="DST",
                                help="namespace/name or address (a Service's endpoint)")
    policy_explain.add_argument("port", metavar="PORT/PROTO", help="e.g. 80/TCP or 53/UDP")
    for command in (policy_show, policy_explain):
        _add_store_arguments(command)
        command.add_argument("--lab", default="", metavar="NAME", help="a lab's datastore")
        command.set_defaults(func=_cmd_policy)

    for name, func, verb in (("apply", _cmd_apply, "create or replace"),
                             ("delete", _cmd_delete, "delete")):
        cmd = sub.add_parser(name, help=f"{verb} objects in the datastore, like kubectl")
        cmd.add_argument("-f", "--filename", required=True, help="a YAML file, or - for stdin")
        _add_store_arguments(cmd)
        cmd.set_defaults(func=func)

    full = sub.add_parser("install", help="install weft on a node: runtime, CNI binaries "
                          "and kubeconfig (the DaemonSet's init container)")
    full.add_argument("--runtime-dir", default="/opt/weft",
                      help="where the runtime goes (default: /opt/weft)")
    full.add_argument("--bin-dir", default="/opt/cni/bin",
                      help="CNI binary directory (default: /opt/cni/bin)")
    full.add_argument("--conf-dir", default="/etc/cni/net.d",
                      help="where the CNI kubeconfig goes (default: /etc/cni/net.d)")
    full.add_argument("--datastore", choices=("local", "kubernetes"),
                      default=os.environ.get("WEFT_DATASTORE", "local"),
                      help="kubernetes also writes the CNI plugin's kubeconfig")
    full.set_defaults(func=_cmd_install)

    install = sub.add_parser("install-cni", help="install the weft and weft-ipam CNI binaries")
    install.add_argument("--bin-dir", default="/opt/cni/bin",
                         help="CNI binary directory (default: /opt/cni/bin)")
    install.set_defaults(func=_cmd_install_cni)

    lab_cli.add_parser(sub)
    return parser


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datastore", choices=("local", "kubernetes"),
                        default=os.environ.get("WEFT_DATASTORE", "local"))
    agent_config.add_datastore_path(parser)


def _store(args: argparse.Namespace):
    """The datastore the --datastore, --datastore-path and --kubeconfig flags name."""
    from weft.ipam.plugin import datastore

    where = args.kubeconfig if args.datastore == "kubernetes" else args.datastore_path
    return datastore(args.datastore, where)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(args.func(args))
    except (UserError, DatastoreError, UnderlayError, IptablesError, InstallError,
            lab_cli.LabCommandError, CNIError) as err:
        sys.exit(f"weft: {err}")
    except PermissionError as err:
        sys.exit(f"weft: {err.strerror}: {err.filename or ''} (weft needs root)")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # one line for people; the traceback with -v
        if args.verbose:
            raise
        sys.exit(f"weft: {type(err).__name__}: {err} (run with -v for details)")
