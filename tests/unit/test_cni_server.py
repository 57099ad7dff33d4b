"""The agent's CNI socket server: it runs requests and finishes them when it stops."""

import threading
import time

from weft.agent.cni_server import CNIServer
from weft.cni import shim


def test_stopping_finishes_the_requests_in_hand(tmp_path):
    started, finished = threading.Event(), threading.Event()

    def slow(env, stdin):
        started.set()
        time.sleep(0.5)
        finished.set()
        return 0, b"plumbed " + env["CNI_CONTAINERID"].encode()

    seen = []
    server = CNIServer(str(tmp_path / "cni.sock"), {"weft": slow},
                       lambda *report: seen.append(report[:3]))
    server.start()
    answers = []
    request = shim.encode_request("weft", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, b"{}")
    client = threading.Thread(
        target=lambda: answers.append(shim.ask_agent(server.path, request)))
    client.start()
    assert started.wait(5)
    server.stop()  # while the request is still running
    assert finished.is_set()
    client.join(5)
    assert answers == [(0, b"plumbed c1")]
    assert seen == [("weft", "ADD", 0)]
    assert not (tmp_path / "cni.sock").exists()
