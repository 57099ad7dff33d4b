import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from weft.agent import native
from weft.agent.install import install_binaries, shim_kind
from weft.cni import shim


def test_request_round_trip_keeps_only_cni_variables():
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2", "HOME": "/root"}
    plugin, decoded, stdin = shim.decode_request(shim.encode_request("weft-ipam", env, b"{}"))
    assert (plugin, decoded, stdin) == ("weft-ipam", {"CNI_COMMAND": "ADD",
                                                      "CNI_ARGS": "A=1;B=2"}, b"{}")


def test_socket_path_is_read_only_when_the_key_is_there():
    assert shim.socket_path(b'{"type": "weft"}') == shim.DEFAULT_SOCKET
    assert shim.socket_path(b'{"socket": "/tmp/x.sock"}') == "/tmp/x.sock"
    assert shim.socket_path(b'{"ipam": {"socket" : "/run/a b.sock"}}') == "/run/a b.sock"
    assert shim.socket_path(b'{"socket": broken') == ""
    assert shim.socket_path(b'{"socket": 7}') == ""
    assert shim.socket_path(b'{"socket": "/tmp/\\u0078.sock"}') == ""


def test_no_agent_means_none_and_a_dying_agent_means_try_again(tmp_path):
    assert shim.ask_agent(str(tmp_path / "absent.sock"), b"x") is None
    path = str(tmp_path / "rude.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    code, out = shim.ask_agent(path, b"x")
    assert code == 11
    assert json.loads(out)["code"] == 11
    server.close()


def test_the_shim_imports_nothing_heavy():
    probe = ("import sys; import weft.cni.shim; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pyroute2', 'kubernetes', 'yaml', 'netaddr', 'json')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)
    assert out.stdout.strip() == b"[]"


@pytest.fixture(params=["python", "compiled"])
def installed(request, tmp_path) -> Path:
    """A CNI bin directory with one kind of shim: the Python one, or the compiled one."""
    compiled = request.param == "compiled"
    if compiled and native.compiled_shim() is None:
        pytest.skip("no C compiler to build the compiled shim")
    install_binaries(tmp_path / "bin", compiled=compiled)
    assert shim_kind(tmp_path / "bin" / "weft") == ("compiled shim" if compiled
                                                    else "Python shim")
    return tmp_path / "bin"


class FakeAgent:
    """Listens on a unix socket, records one request and answers it with `reply`."""

    def __init__(self, path: Path, reply: bytes | None) -> None:
        self.request = b""
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen()
        self._reply = reply
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        with conn:
            while chunk := conn.recv(65536):
                self.request += chunk
                if self._reply is None:  # an agent that dies mid-request
                    return
            conn.sendall(self._reply)

    def close(self) -> None:
        self._thread.join(5)
        self._server.close()


def run_binary(binary: Path, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary)], input=stdin, env=env, capture_output=True, timeout=30)


def test_both_shims_speak_the_protocol_and_relay_the_answer(installed, tmp_path):
    path = tmp_path / "agent.sock"
    agent = FakeAgent(path, b'3\n{"answer": true}\n')
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_ARGS": "K8S_POD_NAME=a",
           "HOME": "/nowhere"}
    stdin = json.dumps({"cniVersion": "1.0.0", "type": "weft", "socket": str(path)}).encode()
    done = run_binary(installed / "weft-ipam", env, stdin)
    agent.close()
    assert (done.returncode, done.stdout) == (3, b'{"answer": true}\n'), done.stderr
    assert agent.request == shim.encode_request("weft-ipam", env, stdin)


def test_both_shims_say_try_again_when_the_agent_dies(installed, tmp_path):
    path = tmp_path / "agent.sock"
    agent = FakeAgent(path, None)
    done = run_binary(installed / "weft", {"CNI_COMMAND": "ADD"},
                      json.dumps({"socket": str(path)}).encode())
    agent.close()
    assert done.returncode == 11
    assert json.loads(done.stdout)["code"] == 11


def test_without_an_agent_both_shims_answer_in_process(installed, tmp_path):
    stdin = json.dumps({"cniVersion": "0.4.0", "socket": str(tmp_path / "none.sock")}).encode()
    done = run_binary(installed / "weft", {"CNI_COMMAND": "VERSION"}, stdin)
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["cniVersion"] == "0.4.0"
    # A socket value that is not a plain string is left to the config parser to report.
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_PATH": "/nowhere"}
    done = run_binary(installed / "weft", env, b'{"socket": 7')
    assert json.loads(done.stdout)["code"] == 6  # the spec's decoding failure


def test_the_compiled_shim_says_what_to_do_when_its_fallback_is_missing(tmp_path):
    if native.compiled_shim() is None:
        pytest.skip("no C compiler to build the compiled shim")
    install_binaries(tmp_path / "bin")
    (tmp_path / "bin" / ".weft" / "weft").unlink()
    done = run_binary(tmp_path / "bin" / "weft", {"CNI_COMMAND": "VERSION"},
                      json.dumps({"socket": str(tmp_path / "none.sock")}).encode())
    error = json.loads(done.stdout)
    assert (done.returncode, error["code"]) == (1, 100)
    assert "weft install" in error["details"]


def test_the_compiled_shim_builds_without_warnings():
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    built = subprocess.run([compiler, "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                            str(native.SOURCE)], capture_output=True)
    assert built.returncode == 0, built.stderr.decode()
