#!/usr/bin/env bash
# vm-test.sh - `make vm-test`: run the test suite inside the Vagrant VM, on the
# guest's own stock Debian kernel, and check its result here.
#
# Offline and self-contained: builds (or reuses) the box with build-box.sh,
# runs libvirtd in private mount, network and PID namespaces made here (all VM
# networking stays inside them), boots the VM with vagrant-libvirt, runs
# `sudo make test` on the synced checkout, prints the guest's pytest summary,
# checks it, and destroys the VM. Whatever fails, the VM is destroyed, libvirtd
# stopped, and the namespaces go with the last process in them.
#
# Env: RECORDER_VM_CACHE (default /var/cache/recorder/vm), RECORDER_VM_CPUS,
#      RECORDER_VM_MEMORY, RECORDER_VM_DRIVER (default qemu: TCG, since this
#      machine's /dev/kvm cannot run a stock guest kernel),
#      RECORDER_VM_TIME_SCALE (the tests' time bounds factor: 4 under TCG),
#      RECORDER_VM_TESTS (pytest paths or node ids; default: tests) and
#      RECORDER_VM_MARKERS (default: the guest's, below) to run a part of the
#      suite in the guest, e.g. a host-only test on the guest's older kernel;
#      RECORDER_VM_GUEST_ENV: NAME=VALUE words added to the guest suite's
#      environment (e.g. RECORDER_COVERAGE=1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${RECORDER_VM_CACHE:-/var/cache/recorder/vm}"
say() { printf 'vm-test: %s\n' "$*" >&2; }
# The guest runs the tests that face the kernel: BPF (arming, harvest, capture,
# links, namespaces) and those marked `guest`, less those marked `host`
# (packaging: wheels, venvs); `make test` here runs them all.
# The guest also runs the channel's tests (`vm`): over vsock_loopback, and to
# this side's `recorder collect` on the VM's network, whose folder this side's
# half (tests/test_channel_vm_host.py, `vm_host`) then checks.
guest_markers="${RECORDER_VM_MARKERS:-((bpf or guest) and not host) or vm}"
channel_port=7070
guest_tests="${RECORDER_VM_TESTS:-tests}"
die() { say "$*"; exit 1; }

# Step timings, reported at the end.
timings=()
step_start=0
begin() { step_start=$SECONDS; say "$1"; }
took() { timings+=("$(printf '%-24s %5d s' "$1" $((SECONDS - step_start)))"); }

# ----------------------------------------------------------------- inside --
# Runs as PID 1 of the new namespaces: libvirtd, the VM, the suite, cleanup.
# Globals, not locals: the EXIT trap reads them after inside() has unwound.
run=""
libvirtd_pid=""
collector_pid=""
inside() {
    run="$1"
    local box_name="$2"
    local guest_log="$run/guest.log"

    cleanup() {
        local rc=$?
        if [ -n "$(virsh list --all --name 2>/dev/null | grep -v '^$')" ]; then
            begin "destroying the VM"
            (cd "$here" && vagrant destroy -f) >"$run/destroy.log" 2>&1 \
                || { say "vagrant destroy failed:"; tail -5 "$run/destroy.log" >&2; }
            took "vagrant destroy"
        fi
        if [ -n "$collector_pid" ]; then
            kill "$collector_pid" 2>/dev/null || true
            wait "$collector_pid" 2>/dev/null || true
        fi
        if [ -n "$libvirtd_pid" ]; then
            kill "$libvirtd_pid" 2>/dev/null || true
            wait "$libvirtd_pid" 2>/dev/null || true
        fi
        [ "${#timings[@]}" -eq 0 ] || printf "%s\n" "${timings[@]}" >"$run/timings"
        exit "$rc"
    }
    trap cleanup EXIT
    # PID 1 of a namespace ignores signals it has no handler for.
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # Private state for libvirt: its config, state, sockets and logs.
    mount -t tmpfs tmpfs /run
    local dir
    for dir in /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
        mkdir -p "$run/root$dir" "$dir"
        [ -d "$dir" ] && cp -a "$dir/." "$run/root$dir/"
        mount --bind "$run/root$dir" "$dir"
    done
    mkdir -p /run/libvirt
    cat >/etc/libvirt/qemu.conf <<'EOF'
# vm-test: a private libvirtd as root, no confinement, no cgroups, no virtlogd.
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
EOF
    ip link set lo up

    libvirtd >"$run/libvirtd.log" 2>&1 &
    libvirtd_pid=$!
    local tries=0
    until virsh -q version >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ "$tries" -lt 50 ] || { tail -20 "$run/libvirtd.log" >&2; die "libvirtd did not start"; }
        kill -0 "$libvirtd_pid" 2>/dev/null \
            || { tail -20 "$run/libvirtd.log" >&2; die "libvirtd exited"; }
        sleep 0.2
    done
    mkdir -p "$run/pool"
    virsh -q pool-define-as default dir --target "$run/pool" >/dev/null
    virsh -q pool-start default >/dev/null

    export VAGRANT_DOTFILE_PATH="$run/dot" RECORDER_VM_BOX="$box_name"
    cd "$here"
    begin "vagrant up ($RECORDER_VM_DRIVER, ${RECORDER_VM_CPUS} vCPUs, ${RECORDER_VM_MEMORY} MiB)"
    if ! vagrant up --provider libvirt --no-provision >"$run/up.log" 2>&1; then
        tail -40 "$run/up.log" >&2
        tail -n 20 /var/log/libvirt/qemu/*.log >&2 2>/dev/null || true
        die "vagrant up failed"
    fi
    took "vagrant up"
    say "guest kernel: $(vagrant ssh -c 'uname -r' 2>/dev/null | tr -d '\r')"

    # The host's collector, on this side of the VM's network (the guest's
    # default gateway), for the guest's channel test.
    local gateway forward_url
    gateway="$(vagrant ssh -c "ip -4 route show default" 2>/dev/null \
               | awk '{print $3; exit}' | tr -d '\r')"
    [ -n "$gateway" ] || die "the guest has no default route"
    forward_url="tcp://$gateway:$channel_port"
    "$repo/.venv/bin/recorder" collect --listen "$forward_url" --out "$run/channel" \
        >"$run/collect.log" 2>&1 &
    collector_pid=$!
    say "collector on $forward_url"

    # Setup (provision.sh, the C build) and the suite timed apart; the suite
    # as CI runs it: CI=true makes a skipped BPF test a failure. Emulation is
    # slower: time bounds in tests are scaled by RECORDER_TEST_TIME_SCALE.
    local guest_rc=0
    begin "sudo make setup all in the guest"
    vagrant ssh -c 'cd /vagrant && sudo make -j2 setup all' >"$guest_log" 2>&1 || guest_rc=$?
    took "make setup all (guest)"
    if [ "$guest_rc" -eq 0 ]; then
        begin "sudo make test in the guest"
        vagrant ssh -c "cd /vagrant && sudo modprobe vsock_loopback && sudo env CI=true RECORDER_IN_VM=1 RECORDER_VM_FORWARD_URL=$forward_url ${RECORDER_VM_GUEST_ENV:-} PYTEST_ADDOPTS='-rsfE --durations=40' \
            RECORDER_TEST_TIME_SCALE=$RECORDER_VM_TIME_SCALE \
            make test TEST_MARKERS='$guest_markers' TEST_PATHS='$guest_tests'" \
            >>"$guest_log" 2>&1 || guest_rc=$?
        took "make test (guest)"
    fi
    tr -d '\r' <"$guest_log" >"$guest_log.txt"
    echo "$guest_rc" >"$run/guest.rc"

    # This side's half of the channel test, on what the collector wrote.
    kill -INT "$collector_pid" 2>/dev/null || true
    wait "$collector_pid" 2>/dev/null || true
    collector_pid=""
    if guest_ran_channel_test; then
        local channel_rc=0
        (cd "$repo" && RECORDER_VM_CHANNEL_OUT="$run/channel" .venv/bin/python -m pytest \
            -q -p no:cacheprovider -m vm_host -rsfE tests/test_channel_vm_host.py) \
            >"$run/channel.log" 2>&1 || channel_rc=$?
        echo "$channel_rc" >"$run/channel.rc"
    fi
}

# Whether the guest's selection holds the guest half of the channel test.
guest_ran_channel_test() {
    # Listed whole first: `grep -q` closing the pipe early would make pytest
    # fail with EPIPE, and pipefail would turn that into "no".
    local listed
    listed="$(cd "$repo" && .venv/bin/python -m pytest --collect-only -q \
              -p no:cacheprovider -m "$guest_markers" $guest_tests 2>/dev/null)" || true
    grep -q "test_daemon_forwards_to_the_host_collector" <<<"$listed"
}

# ---------------------------------------------------------------- outside --
host_packages=(vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu
               libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base iptables
               debootstrap e2fsprogs)

# The host side's tools, and the users and groups that libvirt-daemon-system
# would create (it is not installed: it would start a system-wide libvirtd).
host_setup() {
    local installed
    installed="$(dpkg-query -W -f='${Status}\n' "${host_packages[@]}" 2>/dev/null \
                 | grep -c 'install ok installed' || true)"
    if [ "$installed" -ne "${#host_packages[@]}" ]; then
        say "installing ${host_packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${host_packages[@]}" >/dev/null
    fi
    local group
    for group in kvm libvirt libvirt-qemu libvirt-dnsmasq; do
        getent group "$group" >/dev/null || groupadd -r "$group"
    done
    getent passwd libvirt-qemu >/dev/null \
        || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    getent passwd libvirt-dnsmasq >/dev/null \
        || useradd -r -g libvirt-dnsmasq -d /var/lib/libvirt/dnsmasq -s /usr/sbin/nologin \
                   libvirt-dnsmasq
}

# The guest's summary must show the same tests as here, none failed or in
# error. BPF tests cannot have been skipped: CI=true fails them instead.
check_summary() {
    local log="$1" rc="$2"
    local summary expected passed skipped failed errors
    summary="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 || true)"
    say "guest: ${summary:-no pytest summary}"
    [ -n "$summary" ] || return 1
    count() { grep -oE "[0-9]+ $1" <<<"$summary" | cut -d' ' -f1 || echo 0; }
    passed="$(count passed)"; skipped="$(count skipped)"
    failed="$(count failed)"; errors="$(count 'errors?')"
    expected="$(cd "$repo" && .venv/bin/python -m pytest --collect-only -q \
                -m "$guest_markers" $guest_tests 2>/dev/null \
                | grep -oE '^[0-9]+(/[0-9]+)? tests? collected' | cut -d'/' -f1 \
                | cut -d' ' -f1 || true)"
    say "guest: ${passed:-0} passed, ${skipped:-0} skipped, ${failed:-0} failed," \
        "${errors:-0} errors; this side collects ${expected:-?} tests"
    [ "$rc" -eq 0 ] && [ "${failed:-0}" -eq 0 ] && [ "${errors:-0}" -eq 0 ] \
        && [ -n "$expected" ] && [ $(( ${passed:-0} + ${skipped:-0} )) -eq "$expected" ]
}

main() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, libvirtd, namespaces)"
    export RECORDER_VM_DRIVER="${RECORDER_VM_DRIVER:-qemu}"
    export RECORDER_VM_CPUS="${RECORDER_VM_CPUS:-2}"
    export RECORDER_VM_MEMORY="${RECORDER_VM_MEMORY:-4096}"
    # TCG ran the suite 7.5 times slower than this machine (488 s vs 65 s).
    local scale=1
    [ "$RECORDER_VM_DRIVER" = qemu ] && scale=4
    export RECORDER_VM_TIME_SCALE="${RECORDER_VM_TIME_SCALE:-$scale}"
    export VAGRANT_HOME="$cache/vagrant.d" VAGRANT_DEFAULT_PROVIDER=libvirt
    export VAGRANT_CHECKPOINT_DISABLE=1 LIBVIRT_DEFAULT_URI=qemu:///system
    # The guest reuses this side's build/ (make vm-test builds it first).
    export RECORDER_VM_SYNC_BUILD=1
    local total_start=$SECONDS

    # One run at a time on this machine: they share the cache and 2 cores.
    mkdir -p "$cache"
    exec 9>"$cache/lock"
    flock -n 9 || { say "waiting for another vm-test to finish"; flock 9; }

    begin "host packages"
    host_setup
    took "host packages"

    # vagrant is here now: its own check of the Vagrantfile, every provider
    # (tests/test_vagrant.py skips it where vagrant is not installed).
    begin "vagrant validate"
    (cd "$repo" && .venv/bin/python -m pytest -q -p no:cacheprovider \
        tests/test_vagrant.py) >&2 || die "vagrant validate failed"
    took "vagrant validate"

    begin "box"
    local box key box_name
    box="$(bash "$here/build-box.sh")"
    key="$(bash "$here/build-box.sh" --key)"
    box_name="recorder-bookworm-$key"
    took "box (build or cache)"

    begin "vagrant box add"
    if ! vagrant box list 2>/dev/null | grep -q "^$box_name "; then
        local old
        for old in $(vagrant box list 2>/dev/null | awk '/^recorder-bookworm-/ {print $1}'); do
            vagrant box remove -f --all "$old" >/dev/null
        done
        vagrant box add -f --name "$box_name" "$box" >/dev/null
    fi
    took "vagrant box add"

    mkdir -p "$cache"
    local run
    run="$(mktemp -d "$cache/run.XXXXXX")"
    # Expanded now: `run` is local, gone when the EXIT trap runs.
    trap "rm -rf '$run'" EXIT
    local inside_rc=0
    unshare --mount --net --pid --fork --mount-proc --propagation private -- \
        bash "$here/vm-test.sh" --inside "$run" "$box_name" || inside_rc=$?
    [ -f "$run/timings" ] && mapfile -t -O "${#timings[@]}" timings <"$run/timings"

    local ok=0
    if [ -f "$run/guest.rc" ]; then
        echo "---------------------------------------------------- guest output (tail)"
        tail -60 "$run/guest.log.txt"
        echo "------------------------------------------------------------------------"
        check_summary "$run/guest.log.txt" "$(cat "$run/guest.rc")" || ok=1
        if [ -f "$run/channel.rc" ]; then
            say "the host's half of the channel test:"
            tail -5 "$run/channel.log" >&2
            [ "$(cat "$run/channel.rc")" -eq 0 ] || ok=1
        elif guest_ran_channel_test; then
            say "the host's half of the channel test did not run"
            tail -5 "$run/collect.log" >&2 2>/dev/null || true
            ok=1
        fi
    else
        ok=1
    fi
    [ "$inside_rc" -eq 0 ] || ok=1
    timings+=("$(printf '%-24s %5d s' "vm-test total" $((SECONDS - total_start)))")
    say "timings:"
    printf '  %s\n' "${timings[@]}" >&2
    [ "$ok" -eq 0 ] || die "FAILED"
    say "passed"
}

if [ "${1:-}" = "--inside" ]; then
    shift
    inside "$@"
else
    main "$@"
fi
