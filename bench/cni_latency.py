"""ADD and DEL latency, and pods per second, of weft against ptp + host-local.

Runs inside a throwaway namespace that plays the node; plugins are exec'd with
the CNI environment and config on stdin, as kubelet's libcni does. Measured in
the same run: weft through its agent, weft in-process (no agent), and the
containernetworking ptp plugin with host-local IPAM, the reference. weft
through its agent is measured twice: with the compiled shim that `weft install`
builds where a C compiler is, and with the Python shim used where none is.

    python3 bench/cni_latency.py [--pods 60] [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, namespace, reexec_inside, summary

from weft.agent.install import install_binaries, shim_kind
from weft.lab import netns, wiring

SYSTEM_CNI = "/usr/lib/cni"
RATE_ROUNDS = 3


def configs(work: Path, bin_dir: Path) -> dict[str, tuple[str, dict]]:
    weft = {"cniVersion": "1.0.0", "name": "bench", "type": "weft", "mtu": 1450,
            "datastore": "local", "datastorePath": str(work / "ds"),
            "stateDir": str(work / "state"), "nodeName": "bench",
            "socket": str(work / "cni.sock"),
            "ipam": {"type": "weft-ipam", "pools": [{"cidr": "10.244.0.0/16"}]}}
    return {
        f"weft (agent, {shim_kind(bin_dir / 'weft')})": (str(bin_dir / "weft"), weft),
        "weft (agent, Python shim)": (str(work / "python-bin" / "weft"), weft),
        "weft (in-process)": (str(bin_dir / "weft"), {**weft, "socket": str(work / "none")}),
        "ptp + host-local": (f"{SYSTEM_CNI}/ptp", {
            "cniVersion": "1.0.0", "name": "bench", "type": "ptp", "mtu": 1450,
            "ipam": {"type": "host-local", "dataDir": str(work / "host-local"),
                     "ranges": [[{"subnet": "10.250.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}),
    }


def invoke(binary: str, conf: dict, command: str, container: str, pod_ns: str,
           cni_path: str) -> float:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": netns.path(pod_ns), "CNI_IFNAME": "eth0", "CNI_PATH": cni_path}
    started = time.perf_counter()
    proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env,
                          capture_output=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} {command} failed: {proc.stdout.decode()}")
    return elapsed


def in_flight(binary: str, conf: dict, command: str, names: list[str], cni_path: str,
              parallel: int) -> float:
    """Seconds to run `command` for every pod with `parallel` invocations at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda i: invoke(binary, conf, command, f"p{i}", names[i], cni_path),
                      range(len(names))))
    return time.perf_counter() - started


def measure(pods: int, parallel: int) -> dict[str, dict]:
    work = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    bin_dir = work / "bin"
    install_binaries(bin_dir)  # the compiled shim where a C compiler is
    install_binaries(work / "python-bin", compiled=False)
    cni_path = f"{bin_dir}:{SYSTEM_CNI}"
    agent = subprocess.Popen([sys.executable, "-m", "weft", "agent", "--node-name", "bench",
                              "--datastore-path", str(work / "ds"), "--state-dir",
                              str(work / "state"), "--socket", str(work / "cni.sock"),
                              "--health-address", "127.0.0.1:9645"],
                             stderr=subprocess.DEVNULL)
    while not (work / "cni.sock").exists():
        if agent.poll() is not None:
            raise RuntimeError("the agent did not start")
        time.sleep(0.05)
    names = [f"wbp{os.getpid()}-{i}" for i in range(pods)]
    for name in names:
        netns.create(name)
    results: dict[str, dict] = {}
    try:
        for label, (binary, conf) in configs(work, bin_dir).items():
            print(f"  {label}: {pods} sequential ADD/DEL, then {RATE_ROUNDS} rounds of {pods} "
                  f"ADDs {parallel} at a time", flush=True)
            for i in range(3):  # warm caches: page cache, block claim, agent imports
                invoke(binary, conf, "ADD", f"warm{i}", names[i], cni_path)
                invoke(binary, conf, "DEL", f"warm{i}", names[i], cni_path)
            adds = [invoke(binary, conf, "ADD", f"c{i}", n, cni_path)
                    for i, n in enumerate(names)]
            dels = [invoke(binary, conf, "DEL", f"c{i}", n, cni_path)
                    for i, n in enumerate(names)]
            rates = []
            for _ in range(RATE_ROUNDS):  # one round lasts a fraction of a second: noisy
                rates.append(pods / in_flight(binary, conf, "ADD", names, cni_path, parallel))
                in_flight(binary, conf, "DEL", names, cni_path, parallel)
            results[label] = {"add": summary(adds), "del": summary(dels),
                              "rate": statistics.median(rates)}
    finally:
        agent.terminate()
        agent.wait()
        for name in names:
            netns.remove(name)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return results


def report(results: dict[str, dict], pods: int, parallel: int) -> str:
    ref = results["ptp + host-local"]
    lines = [f"machine: {machine()}", f"{pods} pods; pods/s with {parallel} ADDs in flight "
             f"(median of {RATE_ROUNDS} rounds)", "",
             "| plugin | ADD p50 | ADD p90 | DEL p50 | DEL p90 | pods/s | ADD p50 vs ref "
             "| pods/s vs ref |", "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['add']['p50'] * 1000:.1f} ms | {r['add']['p90'] * 1000:.1f} ms "
            f"| {r['del']['p50'] * 1000:.1f} ms | {r['del']['p90'] * 1000:.1f} ms "
            f"| {r['rate']:.1f} | {r['add']['p50'] / ref['add']['p50']:.2f}x "
            f"| {r['rate'] / ref['rate']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:
        with namespace() as ns:
            wiring.stub_underlay(ns, "172.31.0.1")
            return reexec_inside(ns, [__file__, "--inside", "--pods", str(args.pods),
                                      "--parallel", str(args.parallel)])
    results = measure(args.pods, args.parallel)
    print(report(results, args.pods, args.parallel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
