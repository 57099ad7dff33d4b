"""`weft lab ...`: the commands of the lab, wired to argparse."""

from __future__ import annotations

import argparse
import os
import sys
import time

from weft.ipam.pools import VXLAN_MODES
from weft.lab import build, matrix, status, topology
from weft.lab.state import LabState, load


class LabCommandError(Exception):
    """A lab command that cannot go on; printed as one line."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="a multi-node cluster of network namespaces")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    def command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        parser = lab_sub.add_parser(name, help=help_text)
        parser.add_argument("--name", default="weft", help="the lab's name (default: weft)")
        parser.set_defaults(func=func)
        return parser

    up = command("up", _up, "build the lab: nodes, agents and pods")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default: 3)")
    up.add_argument("--subnets", type=int, default=2, help="underlay subnets (default: 2)")
    up.add_argument("--pods-per-node", type=int, default=2, help="pods per node (default: 2)")
    up.add_argument("--runtime", choices=("netns", "podman"), default="netns",
                    help="bare namespaces, or busybox containers through podman")
    up.add_argument("--vxlan-mode", choices=VXLAN_MODES, default="CrossSubnet",
                    help="the default pool's vxlanMode (default: CrossSubnet)")
    command("test", _test, "run the connectivity matrix; exit 0 only if all passes")
    command("status", _status, "print nodes, blocks, pods and routes")
    exec_cmd = command("exec", _exec, "run a command in a pod: weft lab exec POD -- CMD")
    exec_cmd.add_argument("pod", help="pod name, with or without the lab's prefix")
    exec_cmd.add_argument("cmd", nargs=argparse.REMAINDER, help="the command")
    remove = command("remove-node", _remove_node, "take a node and its pods out of the lab")
    remove.add_argument("node", help="node name, with or without the lab's prefix")
    command("down", _down, "remove the lab and everything it made")


def _progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


def _loaded(name: str) -> LabState:
    state = load(name)
    if state is None:
        raise LabCommandError(f"no lab named {name!r} is up; start one with 'weft lab up'")
    return state


def _up(args: argparse.Namespace) -> int:
    try:
        topology.plan(args.name, args.nodes, args.subnets, args.pods_per_node)
    except ValueError as err:
        raise LabCommandError(str(err)) from err
    print(f"building lab {args.name!r}: {args.nodes} nodes over {args.subnets} subnets, "
          f"{args.pods_per_node} pods per node ({args.runtime})")
    started = time.monotonic()
    try:
        state = build.up(args.name, args.nodes, args.subnets, args.pods_per_node,
                         args.runtime, _progress, args.vxlan_mode)
    except build.LabError as err:
        raise LabCommandError(str(err)) from err
    print(f"lab {args.name!r} is up in {time.monotonic() - started:.1f}s: "
          f"{len(state.pods)} pods on {args.nodes} nodes; try 'weft lab test'")
    return 0


def _test(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    print(f"testing lab {args.name!r}: {len(state.pods)} pods, {args.name} internet at "
          f"{topology.INTERNET_ADDRESS}")
    checks = matrix.run(state)
    sys.stdout.write(matrix.report(state, checks))
    return 0 if all(c.passed for c in checks) else 1


def _status(args: argparse.Namespace) -> int:
    sys.stdout.write(status.show(_loaded(args.name)))
    return 0


def _exec(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    pod = args.pod if args.pod in state.pods else f"{args.name}-{args.pod}"
    if pod not in state.pods:
        raise LabCommandError(f"no pod {args.pod!r} in lab {args.name!r}; "
                              f"pods: {', '.join(state.pods)}")
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise LabCommandError("give a command: weft lab exec POD -- CMD")
    prefix = matrix.exec_prefix(state, pod)
    os.execvp(prefix[0], [*prefix, *command])
    return 127  # not reached


def _remove_node(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    node = args.node if args.node.startswith(f"{args.name}-") else f"{args.name}-{args.node}"
    try:
        build.remove_node(state, node, _progress)
    except build.LabError as err:
        raise LabCommandError(str(err)) from err
    print(f"{node} removed; its blocks are released")
    return 0


def _down(args: argparse.Namespace) -> int:
    build.down(args.name, _progress)
    print(f"lab {args.name!r} is down")
    return 0
