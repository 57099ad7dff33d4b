"""`weft lab e2e`: upstream's end-to-end tests (e2e.test under ginkgo) against a lab.

The suite runs in the control plane's namespace, from where every node is routable,
as kind's CI runs it beside its cluster: `--provider=skeleton`, the lab's admin
kubeconfig, `KUBERNETES_CONFORMANCE_TEST=y`. Its output streams to the terminal and
to a log; JUnit goes beside it, under the lab's directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

from weft.lab import netns
from weft.lab.build import LabError
from weft.lab.kube import cluster
from weft.lab.state import LabState
from weft.table import render

DEFAULT_FOCUS = r"\[sig-network\].*\[Conformance\]"
LABELS = re.compile(r" \[[^\[\]]*\]$")


def report_dir(state: LabState) -> Path:
    return cluster.kube_layout(state).state_dir / "e2e" / time.strftime("%Y%m%d-%H%M%S")


def command(state: LabState, focus: str, skip: str, procs: int, out: Path) -> list[str]:
    kube = cluster.kube_layout(state)
    for binary in ("e2e.test", "ginkgo"):
        if not (kube.bin_dir / binary).exists():
            raise LabError(f"{kube.bin_dir} lacks {binary}: build it with "
                           "'weft lab build-kubernetes'")
    ginkgo = [str(kube.bin_dir / "ginkgo"), f"--procs={procs}", "--no-color", "--silence-skips",
              f"--focus={focus}", f"--output-dir={out}", "--junit-report=junit.xml",
              "--timeout=2h"]
    if skip:
        ginkgo.append(f"--skip={skip}")
    return [*netns.prefix_command(kube.control_plane), *ginkgo, str(kube.bin_dir / "e2e.test"),
            "--", f"--kubeconfig={kube.admin_kubeconfig}", "--provider=skeleton",
            # Specs that need several nodes skip themselves unless told how many there are.
            f"--num-nodes={len(state.nodes_present)}",
            f"--report-dir={out}", "--disable-log-dump"]


def run(state: LabState, focus: str, skip: str, procs: int) -> int:
    """Run the suite; returns its exit code. What it prints goes to the terminal and the log."""
    out = report_dir(state)
    out.mkdir(parents=True)
    env = {**os.environ, "KUBERNETES_CONFORMANCE_TEST": "y"}
    argv = command(state, focus, skip, procs, out)
    print(f"running upstream e2e ({procs} processes), focus {focus!r}"
          + (f", skip {skip!r}" if skip else "") + f"; log and JUnit in {out}", flush=True)
    with open(out / "e2e.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=out)
        assert proc.stdout is not None
        # As it comes, not by lines: ginkgo marks each passing spec with a lone "•".
        while chunk := os.read(proc.stdout.fileno(), 65536):
            log.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        code = proc.wait()
    specs = results(out / "junit.xml")
    if specs:
        print("\n" + render(("spec", "result", "seconds"),
                            [(name, result, f"{seconds:.0f}") for name, result, seconds in specs
                             if result != "skipped"], upper=True))
    print(f"e2e finished with exit code {code}; log: {out / 'e2e.log'}, JUnit: "
          f"{out / 'junit.xml'}", flush=True)
    return code


def results(junit: Path) -> list[tuple[str, str, float]]:
    """(spec, passed | failed | skipped, seconds) for every spec of a JUnit report."""
    try:
        root = ElementTree.parse(junit).getroot()
    except (OSError, ElementTree.ParseError):
        return []
    found = []
    for case in root.iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("[It] "):
            continue  # suite set-up and tear-down nodes
        # "[It] <spec> [label, label]": the spec's text, without ginkgo's label list.
        name = LABELS.sub("", name.removeprefix("[It] "))
        if case.find("failure") is not None or case.find("error") is not None:
            result = "failed"
        elif case.find("skipped") is not None:
            result = "skipped"
        else:
            result = "passed"
        found.append((name, result, float(case.get("time") or 0)))
    return sorted(found)
