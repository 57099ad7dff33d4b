"""`weft lab up --kubernetes` that fails halfway leaves nothing behind, and takes
binaries from wherever --kube-bin-dir says."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from weft.lab.kube import layout

from .test_cluster import assert_nothing_left

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration,
              pytest.mark.xdist_group("kubernetes")]


def test_a_failed_up_removes_everything_it_made(tmp_path):
    real = layout.default_bin_dir()
    if not (real / "kubelet").exists():
        pytest.skip("the Kubernetes build is missing: run 'weft lab build-kubernetes'")
    # The user's own directory of binaries, with its images beside it: one archive is
    # broken, so up fails after the control plane and containerd already run.
    bin_dir, images = tmp_path / "kube" / "bin", tmp_path / "kube" / "images"
    bin_dir.mkdir(parents=True)
    images.mkdir()
    for binary in real.iterdir():
        (bin_dir / binary.name).symlink_to(binary.resolve())
    for archive in (real.parent / "images").glob("*.tar"):
        (images / archive.name).symlink_to(archive.resolve())
    (images / "zz-broken.tar").write_bytes(b"not an image archive")
    name = f"f{uuid.uuid4().hex[:6]}"

    up = subprocess.run([sys.executable, "-m", "weft", "lab", "up", "--kubernetes", "--name",
                         name, "--nodes", "2", "--kube-bin-dir", str(bin_dir)],
                        capture_output=True, text=True, timeout=600)

    assert up.returncode == 1, up.stdout + up.stderr
    assert f"binaries from {bin_dir}" in up.stdout
    assert "starting etcd and kube-apiserver" in up.stdout  # it got that far
    assert "importing zz-broken.tar failed" in up.stderr and "Traceback" not in up.stderr
    assert "build failed: removing what was made" in up.stdout
    assert_nothing_left(name)
