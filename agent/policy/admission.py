"""NetworkPolicy admission for CNI workers: the agent's enforcer, over a unix socket.

The agent's CNI workers are other processes; the nftables table and what the agent
knows of it live in the agent. A worker's ADD asks the agent to admit the pod's
address and waits for its answer, as the agent's own ADDs call `Enforcer.admit`.

    request:  "<namespace> <name> <address>\\n"
    answer:   "ok\\n", or "error <CNIError as JSON>\\n"
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading

from weft.cni.errors import INTERNAL, CNIError
from weft.cni.plugin import Admission

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60.0


def socket_path(cni_socket: str) -> str:
    """Beside the CNI socket, in the same private directory."""
    return os.path.join(os.path.dirname(cni_socket) or ".", "policy.sock")


class AdmissionServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, admit: Admission) -> None:
        self.admit = admit
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="policy-admission",
                         daemon=True).start()


class _Handler(socketserver.StreamRequestHandler):
    server: AdmissionServer

    def handle(self) -> None:
        request = self.rfile.readline().decode(errors="replace").split()
        try:
            if len(request) != 3:
                raise CNIError(INTERNAL, "a CNI worker sent a malformed admission request")
            self.server.admit(*request)
            self.wfile.write(b"ok\n")
        except CNIError as err:
            self.wfile.write(b"error " + json.dumps(
                {"code": err.code, "msg": err.msg, "details": err.details}).encode() + b"\n")


def client(path: str) -> Admission:
    """An `Admission` that asks the agent at `path`."""
    def admit(namespace: str, name: str, address: str) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT_SECONDS)
                conn.connect(path)
                conn.sendall(f"{namespace} {name} {address}\n".encode())
                answer = conn.makefile("rb").readline().decode(errors="replace").strip()
        except OSError as err:
            raise CNIError(INTERNAL, f"failed to apply NetworkPolicy for pod {namespace}/{name}",
                           f"the agent's policy socket {path} did not answer: {err}") from err
        if answer == "ok":
            return
        try:
            fields = json.loads(answer.removeprefix("error "))
            raise CNIError(fields["code"], fields["msg"], fields.get("details", ""))
        except (ValueError, KeyError, TypeError):
            raise CNIError(INTERNAL, f"failed to apply NetworkPolicy for pod {namespace}/{name}",
                           f"the agent answered '{answer}'") from None
    return admit
