#!/bin/sh
# The root filesystem of one Kubernetes lab node, as a container runtime would give it.
#
#   unshare --mount --propagation private node-root.sh NODE_DIR [SHARED_DIR ...]
#
# Run in a new mount namespace (inside the node's network namespace): the machine's
# root as the lower layer of an overlay whose upper layer is the node's own, so
# whatever the node writes (/etc/cni/net.d, /opt/cni/bin, /opt/weft, /var/lib/weft...)
# stays in NODE_DIR/upper and the machine's own files are never touched. containerd's
# and kubelet's state are bind mounts from NODE_DIR/data (containerd's overlay snapshots
# cannot sit on an overlay). /run and /tmp are the node's own; /run/netns is shared, so the
# pods' namespaces reach the weft agent's mount of it (HostToContainer).
# Each SHARED_DIR (the binaries, the image archives) is mounted read-only at its own
# path, wherever it lives on the machine.
# It ends holding the namespace open: kubelet and containerd join it with nsenter.
set -eu
node_dir=$1
shift
root=$node_dir/root

mkdir -p "$root" "$node_dir/upper" "$node_dir/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$node_dir/upper,workdir=$node_dir/work" "$root"
for fs in dev proc sys; do
    mount --rbind "/$fs" "$root/$fs"
done
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/run/netns"
mount -t tmpfs -o mode=0755 tmpfs "$root/run/netns"
mount --make-shared "$root/run/netns"
# A node starts with empty CNI directories: the machine's own (podman's conflist) stay out.
for dir in etc/cni/net.d opt/cni/bin var/lib/containerd var/lib/kubelet var/log/pods \
           var/log/containers; do
    mkdir -p "$root/$dir" "$node_dir/data/$dir"
    mount --bind "$node_dir/data/$dir" "$root/$dir"
done
for dir in "$@"; do
    mkdir -p "$root$dir"
    mount --bind "$dir" "$root$dir"
    mount -o remount,bind,ro "$root$dir"
done
# Where kubelet mounts hostPath /lib/modules (this machine has none).
mkdir -p "$root/lib/modules"

cd "$root"
mkdir -p .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
exec sleep infinity
