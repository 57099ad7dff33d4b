"""Processes that serve the CNI socket beside the agent, so pods are plumbed on more cores.

The agent's Python runs under one GIL: at ~3.5 ms of CPU per pod under load
that caps it near 285 pods/s whatever the node's cores. A worker is the
in-process path kept warm: it imports weft once, accepts on the agent's
listening socket (inherited and non-blocking, so the processes take turns)
and runs the same runners under the same locks. It reports every request on
a pipe, so the agent's metrics count it, and dies with the agent.

With NetworkPolicy on, a worker's ADD asks the agent to admit the pod's address over
the agent's policy socket (weft.agent.policy.admission), as the agent's own ADDs do.

    python -m weft.agent.cni_workers FD AGENT_PID [POLICY_SOCKET]   (started by the agent)
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from weft.agent.cni_server import CNIServer, Observer, default_runners

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_SECONDS = 10.0
RESPAWN_SECONDS = 1.0


class CNIWorkers:
    """`count` worker processes on the agent's listening socket, respawned when one dies."""

    def __init__(self, listening: socket.socket, count: int, observe: Observer,
                 policy_socket: str = "") -> None:
        listening.setblocking(False)  # shared by every process: a lost race is no wait
        self._fd = listening.fileno()
        self._count = count
        self._observe = observe
        self._policy_socket = policy_socket
        self._stopping = threading.Event()
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self._count:
            return
        for number in range(self._count):
            threading.Thread(target=self._run, args=(number,), name=f"cni-worker-{number}",
                             daemon=True).start()
        log.info("serving CNI requests from %d worker processes too", self._count)

    def stop(self) -> None:
        """Let each worker finish what it is doing, then stop it."""
        self._stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _run(self, number: int) -> None:
        while not self._stopping.is_set():
            extra = [self._policy_socket] if self._policy_socket else []
            proc = subprocess.Popen([sys.executable, "-m", "weft.agent.cni_workers",
                                     str(self._fd), str(os.getpid()), *extra],
                                    pass_fds=(self._fd,),
                                    stdout=subprocess.PIPE)
            with self._lock:
                self._procs.append(proc)
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    plugin, command, code, seconds = line.decode().split()
                    self._observe(plugin, command.strip("-"), int(code), float(seconds))
                except ValueError:
                    log.warning("CNI worker %d wrote %r, not a request report", number, line)
            proc.wait()
            with self._lock:
                self._procs.remove(proc)
            if not self._stopping.is_set():
                log.warning("CNI worker %d exited with status %s; starting it again", number,
                            proc.returncode)
                time.sleep(RESPAWN_SECONDS)


def _die_with(agent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != agent:  # the agent died before prctl took effect
        sys.exit(0)


def _report(plugin: str, command: str, code: int, seconds: float) -> None:
    # One write of a short line is atomic on a pipe, whichever thread makes it.
    os.write(sys.stdout.fileno(), f"{plugin} {command or '-'} {code} {seconds:.6f}\n".encode())


def serve(fd: int, agent: int, policy_socket: str = "") -> None:
    """A worker's life: serve until SIGTERM, then finish the requests in hand."""
    _die_with(agent)
    listening = socket.socket(fileno=fd)
    admit = None
    if policy_socket:
        from weft.agent.policy import admission

        admit = admission.client(policy_socket)
    server = CNIServer(listening.getsockname(), default_runners(admit), observe=_report,
                       listening=listening)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopping.wait()
    server.shutdown()
    server.server_close()  # joins the requests in hand


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:4])
