#!/bin/bash
# hosts.sh — simulated hosts for esfleet's integration tests: each host is a network
# namespace plus a systemd-nspawn container with real systemd as PID 1 and its own D-Bus
# system bus, its root an overlay of / (lower) and a tmpfs (upper). Driven by
# tests/src/hosts.rs (`esfleet_tests::Hosts`); usable by hand as root:
#
#   EFT_ID=dev hosts.sh up hostA hostB hostC   # switch + hosts, boot, wait for D-Bus
#   EFT_ID=dev hosts.sh exec hostA CMD...      # run CMD inside hostA (all its namespaces)
#   EFT_ID=dev hosts.sh pid hostA              # host-side PID of hostA's systemd (PID 1)
#   EFT_ID=dev hosts.sh ip hostA               # hostA's address
#   EFT_ID=dev hosts.sh kill hostA             # crash: SIGKILL the container's PID 1
#   EFT_ID=dev hosts.sh stop hostA             # kill and wait until it is gone
#   EFT_ID=dev hosts.sh start hostA            # (re)boot one host in its existing netns
#   EFT_ID=dev hosts.sh partition|heal|freeze|thaw hostA
#   EFT_ID=dev hosts.sh journal hostA [journalctl args]   # read its journal from outside
#   EFT_ID=dev hosts.sh down                   # tear down everything of testbed 'dev'
#
# EFT_ID (1-8 letters/digits) names one testbed; testbeds with different ids never share
# anything (netns, veths, cgroups, directories), so test processes can run side by side.
# Host i (1-based, in 'up' order) gets 10.88.0.(10+i)/24 on eft0; the hosts sit on bridge
# eftbr0 in netns eft<ID>-sw. The root netns is never touched. EFT_BIN_DIR (given to 'up')
# is bound read-only at /opt/esfleet in every host.
#
# Pitfalls this keeps solved (found while building the shared testbed):
#  1. never boot systemd on the machine's own root (its tmpfiles cleanup wipes /tmp):
#     always an overlay root;
#  2. one cgroup per host (nspawn --keep-unit uses <caller cgroup>/payload);
#  3. nspawn writes /run/systemd/nspawn on the caller's /run: a private tmpfs, inside a
#     private mount namespace, so no mount shows in the machine's mount table;
#  4. the machine's /etc/systemd/system is hidden (opaque overlay dir); getty, logind,
#     firstboot masked;
#  5. per-host machine-id (both places) and hostname;
#  6. a per-host journal directory bound in: it survives kill and reboot;
#  7. liveness of nspawn judged by /proc state and comm (it is reaped late), not kill -0;
#  8. nsenter'd processes live outside the host's cgroup: start long-running things with
#     systemd-run inside the host;
#  9. CAP_NET_ADMIN for network configuration inside a host;
# 10. a killed host's netns stays up: combine kill with partition for "machine gone";
# 11. systemd-run --machine= does not work (hosts are not registered with machined);
# 12. no tc netem here; nft rules inside a netns work;
# 13. --console=read-only, no TTY needed (CI); the boot log goes to console.log.
set -euo pipefail

ID=${EFT_ID:-0}
[[ $ID =~ ^[A-Za-z0-9]{1,8}$ ]] || { echo "hosts.sh: EFT_ID '$ID' must be 1-8 letters/digits" >&2; exit 2; }
BASE=${EFT_BASE:-/tmp/esfleet-hosts}
TB=$BASE/$ID
SW=eft$ID-sw                # the switch's netns
NSP=eft$ID-h-               # + host name: a host's netns
SUBNET=10.88.0
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then   # pure cgroup2
    CG_SD=
    CG_V2=/sys/fs/cgroup/eft-$ID
else                                                 # hybrid: name=systemd v1 + unified
    CG_SD=/sys/fs/cgroup/systemd/eft-$ID
    CG_V2=/sys/fs/cgroup/unified/eft-$ID
fi
BOOT_TIMEOUT=${EFT_BOOT_TIMEOUT:-60}
# A host's disk: the tmpfs its root's writes go to. tmpfs takes memory only for what is
# written; 2g holds two nspawn nodes' machine directories (an image is ~340 MiB) with
# room under Elasticsearch's disk watermarks.
ROOT_SIZE=${EFT_ROOT_SIZE:-2g}
[[ $ROOT_SIZE =~ ^[0-9]+[kmg]$ ]] || { echo "hosts.sh: EFT_ROOT_SIZE '$ROOT_SIZE' must be a size like 512m or 2g" >&2; exit 2; }
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "hosts.sh: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

host_index() {  # name -> 1-based index in 'up' order
    local i; i=$(grep -nx -- "$1" "$TB/list" 2>/dev/null | cut -d: -f1) || true
    [ -n "$i" ] || die "no host '$1' in testbed $ID (hosts: $(tr '\n' ' ' < "$TB/list" 2>/dev/null))"
    echo "$i"
}
veth() { echo "e$ID-$(host_index "$1")"; }   # switch side; <= 15 chars (IFNAMSIZ)

nspawn_pid() { cat "$TB/$1/nspawn.pid" 2>/dev/null || true; }
# alive = exists, is not a zombie (our nspawn is re-parented to init, which may reap late,
# so 'kill -0' stays true after exit) and is still systemd-nspawn
nspawn_alive() {
    local st; [ -n "${1:-}" ] || return 1
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ "${st:0:1}" != Z ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = systemd-nspawn ]
}

# host-side PID of the container's PID 1 (= child of the nspawn process)
leader_pid() {
    local np; np=$(nspawn_pid "$1"); nspawn_alive "$np" || return 1
    local p; p=$(ps -o pid= --ppid "$np" 2>/dev/null | head -n1 | tr -d ' ')
    [ -n "$p" ] || return 1
    echo "$p"
}

host_exec() {
    local h=$1; shift
    local l; l=$(leader_pid "$h") || die "$h is not running"
    # -a: mnt,uts,ipc,net,pid,cgroup (user ns is the same, skipped). Clean env.
    nsenter -t "$l" -a env -i PATH=$CLEAN_PATH HOME=/root TERM=dumb LANG=C.UTF-8 "$@"
}

switch_up() {
    [ -e "/run/netns/$SW" ] && return 0
    ip netns add "$SW"
    ip -n "$SW" link set lo up
    ip -n "$SW" link add eftbr0 type bridge
    ip -n "$SW" link set eftbr0 up
}

host_net() {  # name ip
    local h=$1 addr=$2 v; v=$(veth "$1")
    [ -e "/run/netns/$NSP$h" ] && return 0
    ip netns add "$NSP$h"
    ip -n "$SW" link add "$v" type veth peer name eft0 netns "$NSP$h"
    ip -n "$SW" link set "$v" master eftbr0 up
    ip -n "$NSP$h" link set lo up
    ip -n "$NSP$h" addr add "$addr/24" dev eft0
    ip -n "$NSP$h" link set eft0 up
}

# Runs inside a private mount namespace (unshare -m); everything mounted here
# disappears when nspawn (the last process in that namespace) exits.
launch_inner() {
    local h=$1 H=$TB/$1
    mount -t tmpfs -o "mode=0755,size=$ROOT_SIZE" "eft-rw-$h" "$H/rw"
    mkdir -p "$H/rw/upper" "$H/rw/work"
    local U=$H/rw/upper
    mkdir -p "$U/etc/systemd/system" "$U/var/lib/dbus"
    cat "$H/machine-id" > "$U/etc/machine-id"
    cat "$H/machine-id" > "$U/var/lib/dbus/machine-id"
    echo "$h" > "$U/etc/hostname"
    cp "$TB/hosts" "$U/etc/hosts"
    # hide the build machine's /etc/systemd/system (its enabled services, timers, ...):
    # only vendor units from /lib/systemd/system
    /usr/bin/python3 -c 'import os,sys; os.setxattr(sys.argv[1], "trusted.overlay.opaque", b"y")' \
        "$U/etc/systemd/system"
    ln -s /lib/systemd/system/multi-user.target "$U/etc/systemd/system/default.target"
    for u in console-getty.service container-getty@.service getty@.service \
             serial-getty@.service getty.target systemd-firstboot.service \
             systemd-logind.service systemd-user-sessions.service \
             systemd-update-utmp.service systemd-update-utmp-runlevel.service; do
        ln -s /dev/null "$U/etc/systemd/system/$u"
    done
    mount -t overlay "eft-root-$h" -o "lowerdir=/,upperdir=$U,workdir=$H/rw/work" "$H/root"
    # nspawn writes /run/systemd/nspawn/{propagate,locks} on the caller's /run
    mkdir -p /run/systemd
    mount -t tmpfs -o mode=0755,size=16m "eft-run-$h" /run/systemd
    local bind=(--bind="$H/journal:/var/log/journal")   # journal survives kill and reboot
    local bin; bin=$(cat "$TB/bin_dir" 2>/dev/null || true)
    [ -n "$bin" ] && [ -d "$bin" ] && bind+=(--bind-ro="$bin:/opt/esfleet")
    exec systemd-nspawn --quiet --keep-unit --register=no \
        --directory="$H/root" --machine="$h" --hostname="$h" \
        --network-namespace-path="/run/netns/$NSP$h" --capability=CAP_NET_ADMIN \
        --console=read-only --link-journal=no --resolv-conf=off --timezone=off \
        --tmpfs=/tmp --tmpfs=/var/tmp "${bind[@]}" \
        --boot -- systemd.unit=multi-user.target systemd.firstboot=off \
        systemd.show_status=yes systemd.log_color=no
}

start_host() {  # name ; boots in the background, returns at once
    local h=$1 H=$TB/$1
    host_index "$h" >/dev/null
    nspawn_alive "$(nspawn_pid "$h")" && die "$h already running"
    rm -f "$H/nspawn.pid"
    mkdir -p "$H/rw" "$H/root" "$H/journal"
    [ -s "$H/machine-id" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$H/machine-id"
    # own cgroup per host: nspawn --keep-unit puts the container in <own cgroup>/payload
    local cgs=("$CG_V2/$h"); [ -n "$CG_SD" ] && cgs+=("$CG_SD/$h")
    mkdir -p "${cgs[@]}"
    setsid bash -c '
        for cg in '"${cgs[*]}"'; do echo $$ > "$cg/cgroup.procs"; done
        echo $$ > "'"$H"'/nspawn.pid"
        exec unshare --mount --propagation private "'"$0"'" __inner "'"$h"'"
    ' "$(readlink -f "$0")" </dev/null >"$H/console.log" 2>&1 &
    for _ in $(seq 100); do [ -s "$H/nspawn.pid" ] && break; sleep 0.02; done
}

wait_dbus() {  # name ; waits until systemd answers on the container's system bus
    local h=$1 t0; t0=$(now_ms)
    while :; do
        local l; l=$(leader_pid "$h" || true)
        if [ -n "$l" ] && busctl --address="unix:path=/proc/$l/root/run/dbus/system_bus_socket" \
              call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
              org.freedesktop.DBus.Peer Ping >/dev/null 2>&1; then
            echo "$h: D-Bus up after $(( $(now_ms) - t0 )) ms (leader pid $l)"
            return 0
        fi
        if (( $(now_ms) - t0 > BOOT_TIMEOUT * 1000 )); then
            echo "$h: no D-Bus after ${BOOT_TIMEOUT} s; console.log:" >&2
            tail -20 "$TB/$h/console.log" >&2
            return 1
        fi
        sleep 0.05
    done
}

stop_host() {  # name ; hard kill, waits for nspawn to exit
    local h=$1 np l
    np=$(nspawn_pid "$h")
    if nspawn_alive "$np"; then
        l=$(leader_pid "$h" || true)
        [ -n "$l" ] && kill -9 "$l" 2>/dev/null || true      # the kernel kills the whole pidns
        for _ in $(seq 300); do nspawn_alive "$np" || break; sleep 0.01; done
        nspawn_alive "$np" && kill -9 "$np" 2>/dev/null || true
        for _ in $(seq 300); do nspawn_alive "$np" || break; sleep 0.01; done
    fi
    rm -f "$TB/$h/nspawn.pid"
    # remove the (now empty) cgroup trees the container's systemd left behind
    for cg in "$CG_V2/$h" ${CG_SD:+"$CG_SD/$h"}; do
        [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

cmd=${1:-}; shift || true
case "$cmd" in
    __inner) launch_inner "$1" ;;
    up)
        [ $# -ge 1 ] || die "usage: up NAME..."
        [ $# -le 99 ] || die "at most 99 hosts"
        for h in "$@"; do
            [[ $h =~ ^[a-zA-Z][a-zA-Z0-9-]{0,31}$ ]] || die "bad host name '$h': 1-32 letters, digits, '-', starting with a letter"
        done
        [ "$(printf '%s\n' "$@" | sort | uniq -d)" = "" ] || die "duplicate host names: $*"
        [ -e "$TB/list" ] && die "testbed $ID is already up (run 'down' first)"
        mkdir -p "$TB"
        echo "${EFT_OWNER:-$PPID}" > "$TB/owner.pid"
        echo "${EFT_BIN_DIR:-}" > "$TB/bin_dir"
        { echo "127.0.0.1 localhost"; i=0; for h in "$@"; do i=$((i+1)); echo "$SUBNET.$((10+i)) $h"; done; } > "$TB/hosts"
        printf '%s\n' "$@" > "$TB/list"
        switch_up
        i=0; for h in "$@"; do i=$((i+1)); rm -rf "${TB:?}/$h/journal"; host_net "$h" "$SUBNET.$((10+i))"; done
        for h in "$@"; do start_host "$h"; done
        for h in "$@"; do wait_dbus "$h"; done ;;
    start) start_host "$1"; wait_dbus "$1" ;;
    exec) h=$1; shift; host_exec "$h" "$@" ;;
    pid) leader_pid "$1" ;;
    ip) echo "$SUBNET.$((10 + $(host_index "$1")))" ;;
    kill) l=$(leader_pid "$1") || die "$1 is not running"; kill -9 "$l" ;;
    stop) stop_host "$1" ;;
    partition) ip -n "$SW" link set "$(veth "$1")" down ;;   # pull its cable at the switch
    heal) ip -n "$SW" link set "$(veth "$1")" up ;;
    freeze) echo 1 > "$CG_V2/$1/payload/cgroup.freeze" ;;    # hang every process of the host
    thaw) echo 0 > "$CG_V2/$1/payload/cgroup.freeze" ;;
    journal) h=$1; shift; journalctl --no-pager -D "$TB/$h/journal/$(cat "$TB/$h/machine-id")" "$@" ;;
    down)
        if [ -d "$TB" ]; then
            for f in "$TB"/*/nspawn.pid; do
                [ -e "$f" ] && { stop_host "$(basename "$(dirname "$f")")" & }
            done; wait
        fi
        for ns in /run/netns/"$NSP"*; do
            [ -e "$ns" ] && ip netns del "$(basename "$ns")"   # deletes eft0 and its veth peer
        done
        [ -e "/run/netns/$SW" ] && ip netns del "$SW"          # deletes eftbr0
        for cg in "$CG_V2" ${CG_SD:+"$CG_SD"}; do
            [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        done
        [ "${EFT_KEEP:-0}" = 1 ] || rm -rf "${TB:?}" ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
esac
