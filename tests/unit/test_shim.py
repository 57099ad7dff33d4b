import json
import socket
import subprocess
import sys
import threading

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
