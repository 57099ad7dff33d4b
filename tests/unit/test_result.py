from weft.cni.result import convert, merge, normalize

RESULT = {
    "interfaces": [{"name": "weft0123456789a", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1450},
                   {"name": "eth0", "mac": "11:22:33:44:55:66", "mtu": 1450,
                    "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.244.0.5/32", "gateway": "169.254.1.1", "interface": 1},
            {"address": "fd00::5/128", "gateway": "fe80::1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
    "dns": {},
}


def test_old_versions_carry_ip_versions_and_no_mtu():
    for version in ("0.3.1", "0.4.0"):
        out = convert(RESULT, version)
        assert out["cniVersion"] == version
        assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
        assert all("mtu" not in i for i in out["interfaces"])


def test_1_0_drops_ip_versions_and_1_1_adds_mtu():
    assert all("version" not in ip for ip in convert(RESULT, "1.0.0")["ips"])
    assert all("mtu" not in i for i in convert(RESULT, "1.0.0")["interfaces"])
    assert [i["mtu"] for i in convert(RESULT, "1.1.0")["interfaces"]] == [1450, 1450]


def test_normalize_reads_an_old_result_back():
    assert normalize(convert(RESULT, "0.3.1")) == {
        **RESULT, "interfaces": [{k: v for k, v in i.items() if k != "mtu"}
                                 for i in RESULT["interfaces"]]}
    assert normalize(None) == {"interfaces": [], "ips": [], "routes": [], "dns": {}}


def test_merge_shifts_interface_indices_past_the_previous_result():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [], "dns": {}}
    out = merge(prev, RESULT["interfaces"], RESULT["ips"], RESULT["routes"])
    assert [i["name"] for i in out["interfaces"]] == ["lo0", "weft0123456789a", "eth0"]
    assert [ip["interface"] for ip in out["ips"]] == [2, 2]
