"""The CNI executable's fast path: hand the request to the node agent and relay its answer.

kubelet runs this once per pod. It imports nothing but `_socket`, `os` and
`sys`, so it starts in milliseconds; the agent already holds pyroute2, the
datastore and its caches. When no agent answers on the socket it does the work
in-process through the same functions (slower: pyroute2 must be imported).

Wire protocol on the unix socket, one request per connection:
  request  b"weft/1 <plugin> <len(env)>\\n" + env + stdin, then shutdown(SHUT_WR);
           env is the CNI_* variables as b"NAME=VALUE" joined by NUL bytes.
  reply    b"<exit code>\\n" + stdout.

shim.c speaks the same protocol compiled, for installs with a C compiler; it
execs this shim's launcher when no agent answers. The installed launchers import
this file as byte code from a private directory (see weft.agent.install), so it
must stay stdlib-only and self-contained.
"""

import _socket
import os
import sys

DEFAULT_SOCKET = "/run/weft/cni.sock"
MAGIC = b"weft/1"
PLUGINS = ("weft", "weft-ipam")
# Exit status and stdout when the agent hung up mid-request: the spec's code 11.
_RETRY = b'{"cniVersion": "1.1.0", "code": 11, "msg": "the weft agent closed the connection",' \
         b' "details": "try again; see the weft-node agent log"}\n'


def encode_request(plugin: str, env: dict, stdin: bytes) -> bytes:
    block = b"\0".join(f"{k}={v}".encode() for k, v in env.items() if k.startswith("CNI_"))
    return b"%s %s %d\n" % (MAGIC, plugin.encode(), len(block)) + block + stdin


def decode_request(data: bytes) -> tuple:
    """(plugin, env, stdin) from a request; ValueError when it is not one."""
    header, _, rest = data.partition(b"\n")
    magic, plugin, size = header.split(b" ")
    if magic != MAGIC or plugin.decode() not in PLUGINS:
        raise ValueError("not a weft CNI request")
    block, stdin = rest[: int(size)], rest[int(size):]
    env = dict(item.decode().split("=", 1) for item in block.split(b"\0") if item)
    return plugin.decode(), env, stdin


def socket_path(stdin: bytes) -> str:
    """The config's `socket`, found without a JSON parser (importing json pulls in re).

    Returns "" when the value is not a plain string, so that the in-process path
    parses the config properly and reports what is wrong with it.
    """
    key = stdin.find(b'"socket"')
    if key < 0:
        return DEFAULT_SOCKET
    rest = stdin[key + len(b'"socket"'):].lstrip()
    if rest[:1] != b":":
        return ""
    rest = rest[1:].lstrip()
    end = rest.find(b'"', 1)
    if rest[:1] != b'"' or end < 0 or b"\\" in rest[:end]:
        return ""
    return rest[1:end].decode("utf-8", "replace")


def ask_agent(path: str, request: bytes):
    """(exit code, stdout) from the agent, or None when no agent listens on `path`."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return 11, _RETRY
    finally:
        sock.close()
    code, sep, out = b"".join(chunks).partition(b"\n")
    if not sep or not code.isdigit():
        return 11, _RETRY
    return int(code), out


def run_in_process(plugin: str, env, stdin: bytes):
    if env.get("CNI_COMMAND") == "VERSION":  # needs no netlink: skip the heavy imports
        from weft.cni.dispatch import version_answer

        return 0, version_answer(stdin)
    if plugin == "weft-ipam":
        from weft.ipam.plugin import run
    else:
        from weft.cni.plugin import run
    return run(env, stdin)


def main(plugin: str = "weft") -> None:
    stdin = sys.stdin.buffer.read()
    env = os.environ
    path = socket_path(stdin)
    answer = ask_agent(path, encode_request(plugin, env, stdin)) if path else None
    if answer is None:
        if "site" not in sys.modules:  # installed binaries start with -S for speed
            import site

            site.main()
        answer = run_in_process(plugin, env, stdin)
    code, out = answer
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    os._exit(code)  # nothing left to clean up: skip the interpreter's teardown


def main_weft() -> None:
    main("weft")


def main_ipam() -> None:
    main("weft-ipam")

