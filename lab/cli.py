"""`weft lab ...`: the commands of the lab, wired to argparse."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from weft.ipam.pools import VXLAN_MODES
from weft.lab import build, matrix, status, topology
from weft.lab.kind import build as kind_build
from weft.lab.kube import addons as kube_addons
from weft.lab.kube import artifacts, cluster, components, gobuild
from weft.lab.kube import e2e as kube_e2e
from weft.lab.kube import layout as kube_layout
from weft.lab.kube import matrix as kube_matrix
from weft.lab.kube import status as kube_status
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
    up.add_argument("--kubernetes", action="store_true",
                    help="real kube-apiserver, containerd and kubelets; weft installed from "
                         "manifests/weft.yaml (build them with 'weft lab build-kubernetes')")
    up.add_argument("--kube-bin-dir", type=Path, default=None,
                    help="with --kubernetes: the Kubernetes binaries to use, with the image "
                         f"archives in ../images (default: {kube_layout.default_bin_dir()})")
    up.add_argument("--retain", action="store_true",
                    help="keep a lab whose build failed, to look at its logs")
    kb = lab_sub.add_parser("build-kubernetes",
                            help="build the Kubernetes lab's binaries and images from source")
    kb.add_argument("--kubernetes-version", default=components.KUBERNETES_VERSION,
                    help=f"a Kubernetes release (default: {components.KUBERNETES_VERSION})")
    kb.set_defaults(func=_build_kubernetes)
    ki = lab_sub.add_parser("build-kind-image",
                            help="build a kind node image of the same Kubernetes, without pulling")
    ki.add_argument("--kubernetes-version", default=components.KUBERNETES_VERSION,
                    help=f"a Kubernetes release (default: {components.KUBERNETES_VERSION})")
    ki.set_defaults(func=_build_kind_image)
    command("kubeconfig", _kubeconfig, "print the path of a Kubernetes lab's admin kubeconfig")
    kubectl_cmd = command("kubectl", _kubectl,
                          "run kubectl against a Kubernetes lab: weft lab kubectl -- ARGS")
    kubectl_cmd.add_argument("args", nargs=argparse.REMAINDER, help="kubectl's arguments")
    e2e_cmd = command("e2e", _e2e, "run upstream's e2e.test against a Kubernetes lab")
    e2e_cmd.add_argument("--focus", default=kube_e2e.DEFAULT_FOCUS,
                         help=f"specs to run (default: {kube_e2e.DEFAULT_FOCUS})")
    e2e_cmd.add_argument("--skip", default="", help="specs to leave out")
    e2e_cmd.add_argument("--procs", type=int, default=2, help="parallel processes (default 2)")
    command("test", _test, "run the connectivity matrix; exit 0 only if all passes")
    command("status", _status, "print nodes, blocks, pods and routes")
    exec_cmd = command("exec", _exec, "run a command in a pod: weft lab exec POD -- CMD")
    exec_cmd.add_argument("pod", help="pod name, with or without the lab's prefix")
    exec_cmd.add_argument("cmd", nargs=argparse.REMAINDER, help="the command")
    remove = command("remove-node", _remove_node, "take a node and its pods out of the lab")
    remove.add_argument("node", help="node name, with or without the lab's prefix")
    command("down", _down, "remove the lab and everything it made")


@contextlib.contextmanager
def _lab_errors() -> Iterator[None]:
    """A lab that cannot be built or reached is one line for the user."""
    try:
        yield
    except (build.LabError, gobuild.BuildError) as err:
        raise LabCommandError(str(err)) from err


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
    if args.kubernetes:
        return _up_kubernetes(args)
    with _lab_errors():
        build.check_can_build(args.name, args.subnets, args.runtime, args.vxlan_mode)
    print(f"building lab {args.name!r}: {args.nodes} nodes over {args.subnets} subnets, "
          f"{args.pods_per_node} pods per node ({args.runtime})")
    started = time.monotonic()
    with _lab_errors():
        state = build.up(args.name, args.nodes, args.subnets, args.pods_per_node,
                         args.runtime, _progress, args.vxlan_mode)
    print(f"lab {args.name!r} is up in {time.monotonic() - started:.1f}s: "
          f"{len(state.pods)} pods on {args.nodes} nodes; try "
          f"'weft lab test{_name_flag(args.name)}'")
    return 0


def _up_kubernetes(args: argparse.Namespace) -> int:
    if args.runtime != "netns" or args.vxlan_mode != "CrossSubnet":
        raise LabCommandError("--kubernetes runs pods under containerd with the default pool "
                              "(CrossSubnet); leave out --runtime and --vxlan-mode")
    bin_dir = args.kube_bin_dir or kube_layout.default_bin_dir()
    with _lab_errors():
        build.check_can_build(args.name, args.subnets, "netns", "CrossSubnet")
        cluster.check_inputs(bin_dir)
    print(f"building Kubernetes lab {args.name!r}: {args.nodes} nodes over {args.subnets} "
          f"subnets, {args.pods_per_node} echo pods per node, binaries from {bin_dir}")
    started = time.monotonic()
    with _lab_errors():
        state = cluster.up(args.name, args.nodes, args.subnets, args.pods_per_node, bin_dir,
                           _progress, args.retain)
    print(f"lab {args.name!r} is up in {time.monotonic() - started:.1f}s: "
          f"{len(state.pods)} pods on {args.nodes} nodes; try "
          f"'weft lab test{_name_flag(args.name)}' or "
          f"'weft lab kubectl{_name_flag(args.name)} -- get pods -A -o wide'")
    return 0


def _name_flag(name: str) -> str:
    return "" if name == "weft" else f" --name {name}"


def _build_kubernetes(args: argparse.Namespace) -> int:
    print(f"building Kubernetes {args.kubernetes_version} and the lab's images "
          f"into {kube_layout.CACHE}")
    with _lab_errors():
        artifacts.build(args.kubernetes_version, _progress)
    return 0


def _build_kind_image(args: argparse.Namespace) -> int:
    print(f"building a kind node image of Kubernetes {args.kubernetes_version} "
          f"into {kube_layout.CACHE}")
    with _lab_errors():
        print(kind_build.build(args.kubernetes_version, _progress))
    return 0


def _kubernetes_lab(name: str) -> LabState:
    state = _loaded(name)
    if state.runtime != cluster.RUNTIME:
        raise LabCommandError(f"lab {name!r} is not a Kubernetes lab; "
                              "start one with 'weft lab up --kubernetes'")
    return state


def _kubeconfig(args: argparse.Namespace) -> int:
    state = _kubernetes_lab(args.name)
    kube = cluster.kube_layout(state)
    print(kube.admin_kubeconfig)
    print(f"# the API server is {kube_layout.api_server_url(state.plan)}, inside the lab: "
          f"run kubectl with 'weft lab kubectl{_name_flag(args.name)} -- ARGS', or as "
          f"'nsenter --net=/run/netns/{kube.control_plane} kubectl --kubeconfig "
          f"{kube.admin_kubeconfig} ARGS'", file=sys.stderr)
    return 0


def _kubectl(args: argparse.Namespace) -> int:
    kube = cluster.kube_layout(_kubernetes_lab(args.name))
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    command = [*cluster.kubectl_prefix(kube), *rest]
    os.execvp(command[0], command)
    return 127  # not reached


def _e2e(args: argparse.Namespace) -> int:
    state = _kubernetes_lab(args.name)
    with _lab_errors():
        return kube_e2e.run(state, args.focus, args.skip, args.procs)


def _test(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    if state.runtime == cluster.RUNTIME:
        print(f"testing Kubernetes lab {args.name!r}: {len(state.pods)} pods")
        checks = kube_matrix.run(state)
        sys.stdout.write(matrix.report(state, checks, kube_matrix.LEGEND))
        return 0 if all(c.passed for c in checks) else 1
    print(f"testing lab {args.name!r}: {len(state.pods)} pods, {args.name} internet at "
          f"{topology.INTERNET_ADDRESS}")
    checks = matrix.run(state)
    sys.stdout.write(matrix.report(state, checks))
    return 0 if all(c.passed for c in checks) else 1


def _status(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    show = kube_status.show if state.runtime == cluster.RUNTIME else status.show
    sys.stdout.write(show(state))
    return 0


def _exec(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    if state.runtime == cluster.RUNTIME:
        cluster.record_pods(state, cluster.kube_layout(state))
    pod = args.pod if args.pod in state.pods else f"{args.name}-{args.pod}"
    if pod not in state.pods:
        raise LabCommandError(f"no pod {args.pod!r} in lab {args.name!r}; "
                              f"pods: {', '.join(state.pods)}")
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise LabCommandError("give a command: weft lab exec POD -- CMD")
    if state.runtime == cluster.RUNTIME:
        prefix = [*cluster.kubectl_prefix(cluster.kube_layout(state)), "-n",
                  kube_addons.WORKLOAD_NAMESPACE, "exec", "-i", pod, "--"]
    else:
        prefix = matrix.exec_prefix(state, pod)
    os.execvp(prefix[0], [*prefix, *command])
    return 127  # not reached


def _remove_node(args: argparse.Namespace) -> int:
    state = _loaded(args.name)
    node = args.node if args.node.startswith(f"{args.name}-") else f"{args.name}-{args.node}"
    remove = cluster.remove_node if state.runtime == cluster.RUNTIME else build.remove_node
    with _lab_errors():
        remove(state, node, _progress)
    print(f"{node} removed; its blocks are released")
    return 0


def _down(args: argparse.Namespace) -> int:
    build.down(args.name, _progress)
    print(f"lab {args.name!r} is down")
    return 0
