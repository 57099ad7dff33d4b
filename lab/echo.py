"""A TCP and UDP echo service that answers with its name and the caller's address.

The lab's "internet" runs it so that `weft lab test` can see which source address
a pod's traffic arrives from (its node's, when NAT outgoing works).
"""

from __future__ import annotations

import argparse
import socketserver
import threading


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weft.lab.echo")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    name = args.name.encode()

    class TCP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(name + b" " + self.client_address[0].encode() + b"\n")

    class UDP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _, sock = self.request
            sock.sendto(name + b" " + self.client_address[0].encode() + b"\n",
                        self.client_address)

    servers: list[socketserver.BaseServer] = []
    for port in args.port:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        servers.append(socketserver.ThreadingTCPServer(("0.0.0.0", port), TCP))
        servers.append(socketserver.ThreadingUDPServer(("0.0.0.0", port), UDP))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
