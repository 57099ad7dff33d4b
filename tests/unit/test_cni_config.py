"""The process edge as a function: bad environments and configs, no machine needed."""

import json

import pytest

from weft.cni import plugin
from weft.cni.config import parse_cni_args
from weft.cni.errors import CNIError
from weft.cni.names import host_ifname

GOOD = {"cniVersion": "1.0.0", "name": "weft", "type": "weft",
        "ipam": {"type": "weft-ipam", "pools": [{"cidr": "10.244.0.0/16"}]}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def run(env=None, conf=GOOD):
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    code, out = plugin.run(ENV if env is None else env, stdin)
    return code, json.loads(out)


@pytest.mark.parametrize(("env", "conf", "code", "words"), [
    (ENV, b"\xff\xfe", 6, "failed to decode"),
    (ENV, b"[1, 2]", 6, "must be a JSON object"),
    (ENV, {**GOOD, "cniVersion": "0.2.0"}, 1, "unsupported cniVersion '0.2.0'"),
    (ENV, {k: v for k, v in GOOD.items() if k != "cniVersion"}, 1, "unsupported cniVersion"),
    (ENV, {**GOOD, "datastore": "etcd"}, 7, "use one of local, kubernetes"),
    (ENV, {**GOOD, "ipam": {"type": "host-local"}}, 7, "ipam type 'host-local'"),
    (ENV, {**GOOD, "ipam": {"type": "weft-ipam", "pools": []}}, 7, "non-empty list"),
    ({**ENV, "CNI_COMMAND": "FROB"}, GOOD, 4, "CNI_COMMAND is 'FROB'"),
    ({**ENV, "CNI_CONTAINERID": "-bad"}, GOOD, 4, "not a valid container ID"),
    ({**ENV, "CNI_IFNAME": "eth/0"}, GOOD, 4, "may not contain"),
    ({**ENV, "CNI_ARGS": "K8S_POD_NAME"}, GOOD, 4, "malformed pair"),
    ({**ENV, "CNI_COMMAND": "CHECK"}, {**GOOD, "cniVersion": "0.3.1"}, 1,
     "CHECK is not defined for cniVersion 0.3.1"),
    ({**ENV, "CNI_COMMAND": "GC"}, GOOD, 1, "GC is not defined for cniVersion 1.0.0"),
])
def test_errors_carry_the_spec_code_and_say_what_to_fix(env, conf, code, words):
    exit_code, error = run(env, conf)
    assert exit_code == 1
    assert error["code"] == code
    assert words in error["msg"] + error.get("details", "")


def test_errors_answer_in_the_configs_version():
    _, error = run({**ENV, "CNI_IFNAME": ""}, {**GOOD, "cniVersion": "0.4.0"})
    assert error["cniVersion"] == "0.4.0"


def test_version_needs_no_config_or_environment():
    code, out = plugin.run({"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0
    assert json.loads(out)["supportedVersions"] == ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_cni_args_parse_pod_identity():
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p") == {
        "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"}


def test_host_ifname_is_stable_short_and_per_interface():
    name = host_ifname("abc", "eth0")
    assert name == host_ifname("abc", "eth0")
    assert name.startswith("weft") and len(name) == 15
    assert name != host_ifname("abc", "net1")


def test_cni_error_json_is_the_spec_object():
    body = json.loads(CNIError(7, "bad", "fix it").to_json("1.1.0"))
    assert body == {"cniVersion": "1.1.0", "code": 7, "msg": "bad", "details": "fix it"}


def test_the_default_log_file_follows_the_state_dir_wherever_it_is_set():
    from weft.cni.config import parse_netconf

    top = parse_netconf(json.dumps({**GOOD, "stateDir": "/srv/a"}).encode())
    assert top.log_file == "/srv/a/cni.log"
    in_ipam = parse_netconf(json.dumps(
        {**GOOD, "ipam": {**GOOD["ipam"], "stateDir": "/srv/b"}}).encode())
    assert in_ipam.log_file == "/srv/b/cni.log"
    chosen = parse_netconf(json.dumps({**GOOD, "stateDir": "/srv/a", "logFile": "/x.log"}
                                      ).encode())
    assert chosen.log_file == "/x.log"


@pytest.mark.parametrize(("env", "logged"), [
    ({k: v for k, v in ENV.items() if k != "CNI_COMMAND"},
     "a request of c1 failed: CNI_COMMAND is not set"),
    ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, "ADD failed: "),
    ({**ENV, "CNI_IFNAME": "eth/0"}, "ADD of c1 failed: "),
])
def test_failures_are_logged_with_what_was_given(env, logged, caplog):
    with caplog.at_level("WARNING", logger="weft.cni"):
        code, _ = run(env)
    assert code == 1
    (record,) = [r for r in caplog.records if r.name == "weft.cni"]
    assert record.getMessage().startswith(logged), record.getMessage()
    assert "None" not in record.getMessage() and "  " not in record.getMessage()
