# The one image weft runs from: the install-cni init container, the agent and the proxy.
#
#   docker build -t weft:dev .
#
# weft goes into Debian's own python3 (pip --break-system-packages), not a venv.
# `weft install` builds the host's runtime by copying the interpreter it runs on,
# that interpreter's stdlib and weft's installed distributions (weft.agent.runtime);
# a venv would add a second interpreter copy and a pyvenv.cfg that points back at
# /usr anyway, and nothing in this image needs isolating from Debian's packages.
# Nothing Python lives under /opt/weft here: the init container mounts the host's
# /opt/weft there.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
        gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
# A regular (not editable) install, staged under /install with the paths it will
# have: /usr/local/lib/python3.11/dist-packages and the weft, weft-cni and weft-ipam
# scripts in /usr/local/bin. pip and the build tools stay in this stage.
RUN python3 -m pip install --root /install --ignore-installed --break-system-packages \
        --no-cache-dir --no-warn-script-location --root-user-action=ignore /src
# The compiled CNI shim (a static binary), built here so the image needs no compiler:
# `weft install` finds it in /var/cache/weft under the hash of the shim.c it ships.
RUN WEFT_CACHE_DIR=/install/var/cache/weft \
    PYTHONPATH=/install/usr/local/lib/python3.11/dist-packages \
    python3 -c "from weft.agent import native; assert native.compiled_shim()"

FROM debian:bookworm-slim
# python3: the interpreter weft runs on and copies to the hosts (it links libpython in,
# so the copy needs no libpython3.11.so beside it).
# iptables: iptables-restore for the agent's NAT chains and the proxy's rules, with the
# nft backend that current kind nodes use. nftables: nft for the NetworkPolicy table.
# iproute2 and conntrack: to look at a node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
        iptables nftables iproute2 conntrack ca-certificates \
 && update-alternatives --set iptables /usr/sbin/iptables-nft \
 && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /install/usr/local /usr/local
COPY --from=build /install/var/cache/weft /var/cache/weft
RUN python3 -I -c "import ssl, ctypes, yaml, kubernetes.client, pyroute2, prometheus_client, \
weft.cli, weft.ipam.kubernetes, weft.agent.main, weft.agent.proxy.main, weft.agent.runtime; \
from weft.agent import native; assert native.compiled_shim()" \
 && weft --help >/dev/null
ENTRYPOINT ["weft"]
