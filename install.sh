#!/usr/bin/env bash
# Install weft and what it needs on a Debian 12 machine (run as root).
#   ./install.sh          weft, its Python dependencies and the tools the lab uses
#   ./install.sh --test   the same, plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")"

# gcc and libc6-dev build the compiled CNI shim (weft.agent.native); without them the
# CNI binaries fall back to the slower Python shim.
packages=(iproute2 iptables nftables conntrack util-linux iputils-ping busybox-static
          containernetworking-plugins iperf3 gcc libc6-dev curl)
extras=""
if [[ "${1:-}" == "--test" ]]; then
    # podman, runc and debootstrap also build the Kubernetes lab's images.
    packages+=(podman runc tcpdump debootstrap)
    extras="[test]"
fi

if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    echo "installing Debian packages: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

echo "installing weft${extras} with pip"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".${extras}"
command -v pyenv >/dev/null && pyenv rehash || true
echo "weft is installed: $(command -v weft || echo "python3 -m weft")"
