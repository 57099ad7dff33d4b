"""A TCP and UDP echo service that answers with its name and the caller's address,
and the client that asks it.

Pods and the lab's "internet" run it, so `weft lab test` can see who answered a
Service and from which source address a request arrived (NAT outgoing, hairpin,
no NAT between pods).

    python -m weft.lab.echo serve --name NAME [--tcp PORT ...] [--udp PORT ...]
    python -m weft.lab.echo ask {tcp|udp} HOST PORT [--timeout S]
    python -m weft.lab.echo probe [--timeout S] < "PROTOCOL HOST PORT" lines

`probe` asks every target at once and prints, per line in order, what answered
(or "-"): a NetworkPolicy truth table of a whole cluster is a few such runs.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def serve(name: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    answer = name.encode()

    class TCP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(answer + b" " + self.client_address[0].encode() + b"\n")

    class UDP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _, sock = self.request
            sock.sendto(answer + b" " + self.client_address[0].encode() + b"\n",
                        self.client_address)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    servers: list[socketserver.BaseServer] = []
    servers += [socketserver.ThreadingTCPServer(("0.0.0.0", p), TCP) for p in tcp_ports]
    servers += [socketserver.ThreadingUDPServer(("0.0.0.0", p), UDP) for p in udp_ports]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()


def ask(protocol: str, host: str, port: int, timeout: float, source_port: int = 0) -> str:
    """The answer of the echo service at host:port, or '' when none comes.

    A fixed `source_port` makes every ask one UDP "connection" to conntrack, as a
    resolver's long-lived socket is.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout)
        if source_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", source_port))
        try:
            if protocol == "tcp":
                sock.connect((host, port))
                data = sock.recv(512)
            else:  # connected, so an ICMP refusal ends the wait at once
                sock.connect((host, port))
                sock.send(b"?")
                data = sock.recv(512)
        except OSError:
            return ""
    return data.decode(errors="replace").strip()


def probe(targets: list[tuple[str, str, int]], timeout: float) -> list[str]:
    with ThreadPoolExecutor(max(1, min(64, len(targets)))) as pool:
        return list(pool.map(lambda t: ask(*t, timeout), targets))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weft.lab.echo")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--tcp", type=int, action="append", default=[])
    s.add_argument("--udp", type=int, action="append", default=[])
    a = sub.add_parser("ask")
    a.add_argument("protocol", choices=("tcp", "udp"))
    a.add_argument("host")
    a.add_argument("port", type=int)
    a.add_argument("--timeout", type=float, default=2.0)
    a.add_argument("--source-port", type=int, default=0)
    a.add_argument("--count", type=int, default=1, help="ask this many times, a line each")
    a.add_argument("--interval", type=float, default=0.0, help="seconds between asks")
    a.add_argument("--timestamps", action="store_true",
                   help="start each line with the monotonic clock (shared by all processes)")
    b = sub.add_parser("probe")
    b.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.name, args.tcp, args.udp)
    elif args.command == "probe":
        targets = [(proto, host, int(port)) for proto, host, port in
                   (line.split() for line in sys.stdin if line.strip())]
        for answer in probe(targets, args.timeout):
            print(answer or "-")
    else:
        answers = []
        for i in range(args.count):
            if i and args.interval:
                time.sleep(args.interval)
            answer = ask(args.protocol, args.host, args.port, args.timeout, args.source_port)
            answers.append(answer)
            print(f"{time.monotonic():.3f} {answer}" if args.timestamps else answer,
                  flush=True)
        sys.exit(0 if all(answers) else 1)


if __name__ == "__main__":
    main()
