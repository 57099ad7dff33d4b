"""Long-lived processes keep datastores open, but follow a kubeconfig that is rewritten."""

import json
import os

import yaml

from weft.cni.config import parse_netconf
from weft.ipam.plugin import ipam_for


def kubeconfig(path, token: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "weft",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "weft", "context": {"cluster": "c", "user": "u"}}]}))


def token_of(conf) -> str:
    return ipam_for(conf).store.api.configuration.api_key["BearerToken"]


def test_a_rewritten_kubeconfig_is_picked_up_and_an_unchanged_one_reused(tmp_path):
    path = tmp_path / "weft-kubeconfig"
    kubeconfig(path, "first")
    conf = parse_netconf(json.dumps({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft", "datastore": "kubernetes",
        "kubeconfig": str(path), "stateDir": str(tmp_path / "state"), "nodeName": "n1"}
    ).encode())
    assert token_of(conf) == "Bearer first"
    # kept open: the warm path
    assert ipam_for(conf).store.opened() is ipam_for(conf).store.opened()

    kubeconfig(path, "second")  # as the agent does every 10 minutes
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert token_of(conf) == "Bearer second"
