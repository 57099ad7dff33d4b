"""The status commands people read: `weft ipam show` and the checksum-offload rule."""

import subprocess
import sys

from weft.agent.vxlan import checksum_offload
from weft.ipam.allocator import IPAM
from weft.ipam.local import LocalStore
from weft.ipam.show import show


def test_ipam_show_prints_pools_blocks_and_allocations(tmp_path):
    store = LocalStore(tmp_path / "ds")
    store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool", "metadata": {"name": "main"},
                  "spec": {"cidr": "10.250.0.0/16", "blockSize": 28}})
    store.create({"apiVersion": "weft.dev/v1", "kind": "IPPool", "metadata": {"name": "bad"},
                  "spec": {"cidr": "10.251.0.0/33"}})
    ipam = IPAM(store, tmp_path / "n1", "n1")
    ipam.assign("ctr/eth0", "ctr", "eth0", "default", "web")
    text = show(store, {"n1": ipam.read_blocks()})
    assert "main  10.250.0.0/16  /28" in text
    block = ipam.blocks()[0].cidr
    assert f"{block}  n1" in text and "  1     14" in text  # used 1, free 14 (15 usable)
    assert "ctr/eth0  default/web" in text
    assert "broken IPPool, ignored: pool bad" in text


def test_ipam_show_through_the_cli_is_one_table_per_section(tmp_path):
    (tmp_path / "ds").mkdir()
    out = subprocess.run([sys.executable, "-m", "weft", "ipam", "show", "--datastore-path",
                          str(tmp_path / "ds"), "--state-dir", str(tmp_path / "st"),
                          "--node-name", "n1"], capture_output=True, text=True, check=True)
    titles = [line for line in out.stdout.splitlines() if line in ("POOLS", "BLOCKS")
              or line.startswith("ALLOCATIONS")]
    assert titles == ["POOLS", "BLOCKS", "ALLOCATIONS on n1"]
    assert out.stdout.count("(none)") == 3


def test_checksum_offload_is_off_only_below_kernel_5_7_unless_overridden():
    assert checksum_offload("auto", "5.4.0-150-generic") is False
    assert checksum_offload("auto", "5.7.0") is True
    assert checksum_offload("auto", "6.18.44-fc") is True
    assert checksum_offload("on", "4.19.0") is True
    assert checksum_offload("off", "6.1.0") is False


def test_ipam_show_only_reads_and_says_when_there_is_no_weft(tmp_path):
    out = subprocess.run([sys.executable, "-m", "weft", "ipam", "show", "--datastore-path",
                          str(tmp_path / "ds"), "--state-dir", str(tmp_path / "st")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("weft: nothing to show: no datastore in ")
    assert "--lab NAME" in out.stderr and len(out.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # a command that only reads wrote nothing
    (tmp_path / "ds").mkdir()
    subprocess.run([sys.executable, "-m", "weft", "ipam", "show", "--datastore-path",
                    str(tmp_path / "ds"), "--state-dir", str(tmp_path / "st")], check=True,
                   capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
