"""The agent's CNI worker processes: they serve pods, are counted, replaced and stopped."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from weft.lab import netns

from ..waiting import eventually

pytestmark = pytest.mark.integration

WORKERS = 2  # the agent's default


def workers_of(agent_pid: int) -> list[int]:
    """Live CNI worker processes whose parent is the agent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, ValueError):
            continue
        if b"weft.agent.cni_workers" in cmdline and parent == agent_pid and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def test_workers_serve_pods_while_the_agent_is_busy_and_are_counted(node):
    node.start_agent()
    assert node.agent is not None
    assert eventually(lambda: len(workers_of(node.agent.pid)) == WORKERS, seconds=20)
    runtime = node.runtime()
    pods = [node.new_pod() for _ in range(6)]
    # Stopped, the agent's own process cannot accept: only its workers can answer.
    os.kill(node.agent.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda i: runtime.add(f"ctr-{i}", netns.path(pods[i])),
                                    range(6)))
    finally:
        os.kill(node.agent.pid, signal.SIGCONT)
    assert len({r["ips"][0]["address"] for r in results}) == 6
    # What the workers served reaches the agent's metrics once it runs again.
    assert eventually(lambda: node.metric("weft_cni_requests_total", plugin="weft",
                                          command="ADD", result="ok") == 6, seconds=10)
    for i, pod in enumerate(pods):
        runtime.delete(f"ctr-{i}", netns.path(pod))
    assert node.links() == [] and node.allocations() == []


def test_a_dead_worker_is_replaced_and_workers_go_with_the_agent(node):
    node.start_agent()
    assert node.agent is not None
    agent = node.agent.pid
    assert eventually(lambda: len(workers_of(agent)) == WORKERS, seconds=20)
    victim = workers_of(agent)[0]
    os.kill(victim, signal.SIGKILL)
    assert eventually(lambda: len(workers_of(agent)) == WORKERS and
                      victim not in workers_of(agent), seconds=20)
    survivors = workers_of(agent)
    # An agent killed outright takes its workers with it (they would serve a stale node).
    # (A worker just respawned may still be importing on a busy machine: it notices once
    # it starts, so the wait is long; a worker that outlives its agent never ends it.)
    node.agent.kill()
    node.agent.wait()
    assert eventually(lambda: not any(Path(f"/proc/{pid}").exists() and
                                      b"cni_workers" in Path(f"/proc/{pid}/cmdline").read_bytes()
                                      for pid in survivors), seconds=60)


def test_a_stopped_agent_stops_its_workers(node):
    node.start_agent()
    assert node.agent is not None
    agent = node.agent.pid
    assert eventually(lambda: len(workers_of(agent)) == WORKERS, seconds=20)
    workers = workers_of(agent)
    node.stop_agent()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
