#!/usr/bin/env bash
# provision.sh - the one setup script: a fresh Debian 12 machine, CI, the
# Vagrant VM. Idempotent: each step checks before it acts and says what it
# did. Run as root from the repository (make does: `make setup`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
say() { printf 'provision: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "provision: must run as root (BPF, apt and /lib/modules need it)" >&2
    exit 1
fi

# 1. Debian packages: bcc (Debian's, never PyPI's unrelated `bcc`), kernel
#    headers for bcc to compile against, SDT headers, bpftool, bpftrace, and
#    LTTng-UST for the benchmark's comparison, Python's headers for the
#    extension recorder._core, Prometheus for the daemon's test (started by
#    the test on free loopback ports; a service it runs is left alone), promtool
#    (in the prometheus package) for the exposition check, tmux for `recorder
#    top`'s test, capsh (libcap2-bin) to run the daemon with its unit's
#    capabilities.
packages=(python3-bpfcc bpfcc-tools libbpfcc linux-headers-amd64
          systemtap-sdt-dev bpftool bpftrace build-essential
          liblttng-ust-dev lttng-tools binutils clang python3-dev python3-venv
          prometheus tmux libcap2-bin)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null \
        | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    say "Debian packages present"
fi
# Setup never stops, disables or reconfigures a service the machine runs:
# Debian's prometheus package may start its own service; the daemon's test
# starts another Prometheus on free loopback ports and leaves that one be.

# 2. Kernel headers. A stock Debian kernel (the Vagrant VM's) has its own
#    package, linux-headers-$(uname -r): installed if missing, it brings the
#    build and source links. A kernel without one (a VM's custom kernel) gets
#    Debian's newest linux-headers-*-amd64 linked, which bcc can compile
#    against. Debian splits them: -amd64 holds the generated, arch-specific
#    part (bcc's `build`), -common the sources (bcc's `source`).
modules="/lib/modules/$(uname -r)"
headers_present() {
    [ -e "$modules/source/include/linux/kconfig.h" ] \
        && [ -e "$modules/build/include/generated" ]
}
own_headers="linux-headers-$(uname -r)"
if ! headers_present && apt-cache show "$own_headers" >/dev/null 2>&1; then
    say "installing $own_headers"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$own_headers" >/dev/null
fi
if headers_present; then
    say "kernel headers present in $modules"
else
    headers="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)"
    common="${headers%-amd64}-common"
    if [ -z "$headers" ] || [ ! -d "$common" ]; then
        echo "provision: no /usr/src/linux-headers-*-amd64 and -common to link" >&2
        exit 1
    fi
    mkdir -p "$modules"
    ln -sfn "$headers" "$modules/build"
    ln -sfn "$common" "$modules/source"
    say "linked $modules/build -> $headers"
    say "linked $modules/source -> $common"
fi

# 2b. bpffs at /sys/fs/bpf: the controller pins its flight ring and links
#     there (tracer/recorder_tracer/kernel/pins.py) so they outlive it.
#     systemd mounts it at boot; a container or a minimal VM may not.
#     Root's only (0700, as systemd mounts it): bpffs defaults to 1777, where
#     any user could create the pin directory first, or pin objects.
if grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    say "bpffs mounted at /sys/fs/bpf"
else
    mount -t bpf -o mode=0700 bpf /sys/fs/bpf
    say "mounted bpffs at /sys/fs/bpf"
fi
if [ "$(stat -c %a /sys/fs/bpf)" != 700 ]; then
    chmod 0700 /sys/fs/bpf
    say "bpffs at /sys/fs/bpf made root's only (was world-writable)"
fi

# 3. The virtualenv: Python 3.11 (bcc's Python binding is built for it),
#    seeing Debian's bcc through a symlink, with the project installed
#    editable and its console script `recorder`.
python=""
for candidate in python3.11 /usr/bin/python3.11; do
    if command -v "$candidate" >/dev/null 2>&1; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$python" ]; then
    echo "provision: Python 3.11 not found" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    say "created $venv with $python"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -e "$site/bcc" ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
    say "linked Debian's bcc into $site"
fi
# The editable install compiles recorder._core from pyapi/recorder/_core.c and
# the core's sources: any of them newer than the stamp builds it again.
newer=""
for source in "$repo/pyproject.toml" "$repo/setup.py" "$repo"/pyapi/recorder/*.c \
              "$repo"/probes/src/*.[ch] "$repo"/probes/include/*.h \
              "$repo"/probes/include/recorder/*.h; do
    if [ "$source" -nt "$venv/.provisioned" ]; then
        newer="$source"
        break
    fi
done
if ! "$venv/bin/python" -c 'import recorder_tracer, recorder._core, click, pytest, build' \
        2>/dev/null || [ -n "$newer" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$repo[dev,tracer,plot]"
    say "installed recorder (editable) into $venv"
else
    say "recorder installed in $venv"
fi
"$venv/bin/python" -c 'import bcc' \
    || { echo "provision: the venv cannot import Debian's bcc" >&2; exit 1; }
touch "$venv/.provisioned"
say "ready"
