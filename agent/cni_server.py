"""The agent's end of the CNI socket: runs requests that the shim hands over.

One thread per connection, so a slow datastore call for one pod does not hold
up the others; allocation and plumbing take the same locks as the in-process
path, so both may run at once.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping

from weft.cni import shim

log = logging.getLogger(__name__)

Runner = Callable[[Mapping[str, str], bytes], tuple[int, bytes]]
Observer = Callable[[str, str, int, float], None]


def default_runners(admit: Callable[[str, str, str], None] | None = None
                    ) -> dict[str, Runner]:
    """The plugins the socket serves; with `admit`, ADD runs NetworkPolicy admission."""
    from weft.cni import plugin
    from weft.ipam import plugin as ipam_plugin

    return {"weft": plugin.runner(admit) if admit else plugin.run, "weft-ipam": ipam_plugin.run}


class _Handler(socketserver.BaseRequestHandler):
    server: CNIServer

    def handle(self) -> None:
        chunks = []
        while chunk := self.request.recv(65536):
            chunks.append(chunk)
        try:
            plugin, env, stdin = shim.decode_request(b"".join(chunks))
        except ValueError:
            log.warning("dropped a malformed request on the CNI socket")
            return
        started = time.monotonic()
        code, out = self.server.runners[plugin](env, stdin)
        self.server.observe(plugin, env.get("CNI_COMMAND", ""), code,
                            time.monotonic() - started)
        self.request.sendall(b"%d\n" % code + out)


class CNIServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves the CNI socket from a background thread. Closing it waits for the
    requests in hand: a pod half plumbed when the agent stops would need kubelet's retry."""

    def __init__(self, path: str, runners: Mapping[str, Runner] | None = None,
                 observe: Observer | None = None,
                 listening: socket.socket | None = None) -> None:
        """Bind `path`; or, in a worker, serve `listening`, the socket the agent bound."""
        self.path = path
        self.runners = dict(runners or default_runners())
        self.observe = observe or (lambda *_: None)
        self._thread: threading.Thread | None = None
        if listening is not None:
            super().__init__(path, _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = listening
            return
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a socket left by an agent that died
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="cni-socket",
                                        daemon=True)
        self._thread.start()
        log.info("serving CNI requests on %s", self.path)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)
