#!/usr/bin/env bash
# build-box.sh - build the Debian 12 Vagrant box (libvirt) that `make vm-test`
# boots, and print its path. The box is a cache: it lives outside the checkout
# and is rebuilt only when its recipe changes (this script, the Debian packages
# listed in provision.sh, the Python dependencies in pyproject.toml).
#
# The box holds everything provision.sh would fetch, so the guest needs no
# network: Debian's stock kernel with its matching headers, the packages of
# provision.sh, and a wheelhouse of the project's Python dependencies that the
# guest's pip is pointed at. It has no bootloader: its Vagrantfile hands the
# kernel and initrd (shipped inside the box) to libvirt.
#
# Usage: vagrant/build-box.sh [--key | --packages]
#        (--key: print the recipe key; --packages: the packages it installs)
# Env:   RECORDER_VM_CACHE (default /var/cache/recorder/vm)
#        RECORDER_VM_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${RECORDER_VM_CACHE:-/var/cache/recorder/vm}"
mirror="${RECORDER_VM_MIRROR:-http://deb.debian.org/debian}"
security="${mirror%/debian}/debian-security"
say() { printf 'build-box: %s\n' "$*" >&2; }

# Debian packages provision.sh installs: read from its `packages=(...)` array,
# so a package someone adds there is in the next box too.
provision_packages() {
    sed -n '/^packages=(/,/)/p' "$here/provision.sh" \
        | tr -d '()' | sed 's/^packages=//' | tr -s ' \n' '\n' | grep -v '^$'
}

# What the guest needs beyond provision.sh: a stock kernel with its headers,
# systemd, DHCP, sshd, sudo, rsync (Vagrant's synced folder), make; and what
# this machine's image has that tests use (PostgreSQL for --usdt, pkg-config).
base_packages=(systemd-sysv udev linux-image-amd64 linux-headers-amd64
               openssh-server sudo rsync ifupdown isc-dhcp-client iproute2
               make python3.11 python3-venv ca-certificates procps kmod less
               postgresql-15 pkg-config)

# Python distributions the guest's pip installs from the wheelhouse: the
# build backend, the project's dependencies and its dev extras, pip itself.
python_requirements() {
    python3 - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
print("\n".join(["pip", "wheel", *data["build-system"]["requires"],
                 *data["project"].get("dependencies", []),
                 *sum(data["project"].get("optional-dependencies", {}).values(), [])]))
EOF
}

recipe_key() {
    { sha256sum <"$here/build-box.sh"; provision_packages; python_requirements; } \
        | sha256sum | cut -c1-12
}

key="$(recipe_key)"
case "${1:-}" in
    --key) echo "$key"; exit 0 ;;
    --packages) printf '%s\n' "${base_packages[@]}"; provision_packages; exit 0 ;;
    "") ;;
    *) echo "build-box: unknown option $1" >&2; exit 2 ;;
esac
box="$cache/recorder-bookworm-$key.box"
if [ -s "$box" ]; then
    say "cached $box"
    echo "$box"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build-box: must run as root (debootstrap, chroot)" >&2
    exit 1
fi
for tool in debootstrap mkfs.ext4 qemu-img; do
    command -v "$tool" >/dev/null || { echo "build-box: $tool is missing" >&2; exit 1; }
done

mkdir -p "$cache"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
boxdir="$work/box"
mkdir -p "$root" "$boxdir"
timer() { printf '%s' "$SECONDS"; }

start=$(timer)
say "debootstrap bookworm into $root"
debootstrap --variant=minbase --include=apt-utils,gnupg bookworm "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
say "debootstrap: $(( $(timer) - start )) s"

# Install inside the chroot in a private mount namespace: /proc, /sys and /dev
# vanish with it, whatever happens. No service starts (policy-rc.d).
start=$(timer)
mapfile -t packages < <(provision_packages)
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
say "installing ${#base_packages[@]} base and ${#packages[@]} provision.sh packages"
unshare --mount --propagation private -- bash -c '
    set -e
    root="$1"; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C
    base=$1; shift
    chroot "$root" apt-get update -qq
    chroot "$root" apt-get install -y -qq --no-install-recommends "${@:1:$base}"
    # As provision.sh installs them: with their recommends (pkg-config...).
    chroot "$root" apt-get install -y -qq "${@:$((base + 1))}"
    chroot "$root" apt-get clean
' _ "$root" "${#base_packages[@]}" "${base_packages[@]}" "${packages[@]}" \
    >"$work/apt.log" 2>&1 \
    || { tail -30 "$work/apt.log" >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d"
say "packages: $(( $(timer) - start )) s"

# The wheelhouse, fetched on this side (the guest has no network).
start=$(timer)
python3 -m venv "$work/pip"
mapfile -t requirements < <(python_requirements)
"$work/pip/bin/pip" download -q -d "$root/opt/recorder-wheels" "${requirements[@]}" \
    >"$work/pip.log" 2>&1 || { tail -20 "$work/pip.log" >&2; exit 1; }
cat >"$root/etc/pip.conf" <<'EOF'
# The VM has no network: pip installs from the wheelhouse built with the box.
[global]
no-index = true
find-links = /opt/recorder-wheels
EOF
say "wheelhouse: $(ls "$root/opt/recorder-wheels" | wc -l) files, $(( $(timer) - start )) s"

# The guest's virtualenv with the project's dependencies already in it, made
# here at native speed: under TCG, pip unpacking and byte-compiling numpy and
# matplotlib took most of the guest's setup. It sits where the checkout is
# synced (/vagrant, rsync excludes .venv/), so provision.sh finds it and only
# installs the project itself.
start=$(timer)
unshare --mount --propagation private -- bash -c '
    set -e
    root="$1"; shift
    mount -t proc proc "$root/proc"
    # A clean environment: PIP_* variables of this side (a find-links that
    # exists here only) would override the guest'"'"'s pip.conf.
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        python3.11 -m venv /vagrant/.venv
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        /vagrant/.venv/bin/pip install -q "$@"
' _ "$root" "${requirements[@]}" >"$work/venv.log" 2>&1 \
    || { tail -20 "$work/venv.log" >&2; exit 1; }
say "guest venv with the dependencies: $(( $(timer) - start )) s"

# The guest: a root file system on /dev/vda (no partition table), eth0 by DHCP,
# the vagrant user with Vagrant's well-known key and password-less sudo.
echo recorder >"$root/etc/hostname"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" >"$root/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' \
    >"$root/etc/network/interfaces"
chroot "$root" useradd -m -s /bin/bash vagrant
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
key_file="$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
            2>/dev/null | head -1)"
[ -n "$key_file" ] || { echo "build-box: Vagrant's vagrant.pub not found" >&2; exit 1; }
install -m 600 -o 1000 -g 1000 "$key_file" "$root/home/vagrant/.ssh/authorized_keys"
echo "vagrant ALL=(ALL) NOPASSWD:ALL" >"$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
echo "UseDNS no" >"$root/etc/ssh/sshd_config.d/vagrant.conf"

# The kernel and initrd go beside the image: libvirt boots them directly.
kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
version="${kernel##*/vmlinuz-}"
cp "$kernel" "$boxdir/vmlinuz"
cp "$root/boot/initrd.img-$version" "$boxdir/initrd.img"
[ -d "$root/usr/src/linux-headers-$version" ] \
    || { echo "build-box: no headers for kernel $version" >&2; exit 1; }
say "guest kernel $version, with its headers"

start=$(timer)
size_gb=8
mkfs.ext4 -q -F -L root -d "$root" "$work/root.raw" "${size_gb}G" >&2
qemu-img convert -O qcow2 "$work/root.raw" "$boxdir/box.img"
rm -f "$work/root.raw"
say "image: $(du -h "$boxdir/box.img" | cut -f1) qcow2, $(( $(timer) - start )) s"

printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' \
    "$size_gb" >"$boxdir/metadata.json"
cat >"$boxdir/Vagrantfile" <<EOF
# recorder's Debian 12 box ($key, kernel $version): no bootloader, so
# libvirt boots the kernel and initrd shipped beside the image.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
    lv.disk_bus = "virtio"
  end
end
EOF
tar -C "$boxdir" -cf "$work/box.tar" metadata.json Vagrantfile box.img vmlinuz initrd.img
# Older boxes are stale: keep only this recipe's.
rm -f "$cache"/recorder-bookworm-*.box
mv "$work/box.tar" "$box"
say "built $box"
echo "$box"
