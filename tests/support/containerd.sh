#!/usr/bin/env bash
# tests/support/containerd.sh - private, throw-away containerd instances for tests.
#
# Usage:
#   tests/support/containerd.sh start   DIR   start (or reuse) the instance in DIR;
#                                             last stdout line = socket path
#   tests/support/containerd.sh stop    DIR   stop it and everything it started
#   tests/support/containerd.sh kill    DIR   SIGKILL the daemon only (shims and
#                                             containers live on)
#   tests/support/containerd.sh restart DIR   kill, then start on the same state
#   tests/support/containerd.sh clean   DIR   stop, then delete DIR
#   tests/support/containerd.sh status  DIR   exit 0 if the daemon answers
#   tests/support/containerd.sh sock    DIR   print the socket path
#   tests/support/containerd.sh ctr     DIR ARGS...
#                                             run ctr against the instance, in
#                                             the k8s.io namespace; `ctr DIR run`
#                                             keeps runc state and fifos in DIR
#
# Everything an instance owns lives in DIR:
#   DIR/config.toml         generated from `containerd config default`
#   DIR/containerd.sock     gRPC (CRI and containerd API); .ttrpc beside it
#   DIR/debug.sock          debug endpoint
#   DIR/root, DIR/state     containerd's root and state folders
#   DIR/state/runc          runc's state for containers made through CRI
#   DIR/cni/{bin,net.d}     empty: pods must use host networking
#   DIR/images/busybox.tar  the sandbox image archive (built once)
#   DIR/containerd.log      daemon log;  DIR/containerd.pid  daemon pid
#
# Processes are recognised by their command lines, never by name alone: the
# daemon by `--config DIR/config.toml`, shims by `-address DIR/containerd.sock`.
# So several instances (in different folders) can run side by side, and a
# system containerd (/run/containerd/containerd.sock) is never touched.
#
# What cannot be kept inside DIR (containerd 1.6 hard-codes these paths):
# shim sockets in /run/containerd/s/ and, for containers started with plain
# `ctr run` (no --runc-root), runc state in /run/containerd/runc/<namespace>/.
# `stop` removes only the entries there that belong to this instance.  That
# shared runc folder also means two instances cannot both `ctr run` a
# container with the same ID at the same time ("container with given ID
# already exists"); `containerd.sh ctr DIR run ...` avoids it by passing
# --runc-root DIR/state/runc, the folder CRI containers use here too.  (Plain
# `ctr run` also puts a container in the cgroup /k8s.io/ID whatever the
# instance, so distinct IDs across instances are wise in any case.)
#
# Environment knobs:
#   CONTAINERD_LOG_LEVEL   daemon log level (default: info)
#   CONTAINERD_START_TIMEOUT  seconds to wait for the daemon (default: 20)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SANDBOX_IMAGE=kubelua.local/busybox:latest
NS=k8s.io
START_TIMEOUT=${CONTAINERD_START_TIMEOUT:-20}
LOG_LEVEL=${CONTAINERD_LOG_LEVEL:-info}
MARKER=.kubelua-containerd # file that marks DIR as made by this script

die() { echo "containerd.sh: $*" >&2; exit 1; }
note() { echo "containerd.sh: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---- paths ----------------------------------------------------------------------

set_paths() { # set_paths DIR -- fill in every path derived from DIR
    [ -n "$1" ] || die "empty DIR"
    # Absolute and normalised, so the strings we match in command lines and
    # in /proc/self/mountinfo are exactly what containerd sees.
    DIR=$(realpath -m -- "$1")
    case "$DIR" in
        / | /bin | /boot | /dev | /etc | /home | /lib* | /opt | /proc | /root | /run | /run/containerd* | \
            /sbin | /srv | /sys | /tmp | /usr | /usr/* | /var | /var/lib | /var/lib/containerd*)
            die "refusing to use $DIR as an instance folder"
            ;;
    esac
    CONFIG=$DIR/config.toml
    SOCK=$DIR/containerd.sock
    PIDFILE=$DIR/containerd.pid
    LOGFILE=$DIR/containerd.log
    # A unix socket path must fit in sun_path (108 bytes with the NUL);
    # ".ttrpc" is appended for the second socket.
    if [ "${#SOCK}" -gt 100 ]; then
        die "DIR is too long for a unix socket path: $SOCK"
    fi
}

ctr_() { # ctr_ ARGS...  -- ctr against this instance, in the CRI namespace
    ctr --address "$SOCK" --namespace "$NS" "$@"
}

# ---- finding our processes in /proc ------------------------------------------------

alive() { # alive PID -- true if PID exists and is not a zombie
    local stat
    [ -r "/proc/$1/stat" ] || return 1
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) } # fields after "(comm) "; the first is the state
    [ "${stat%% *}" != Z ]
}

# Read /proc/PID/cmdline into the array ARGV (empty for kernel threads and
# processes that have vanished).  mapfile keeps this free of subprocesses.
read_argv() {
    ARGV=()
    mapfile -t -d '' ARGV 2>/dev/null <"/proc/$1/cmdline" || true
}

is_our_daemon() { # is_our_daemon PID -- containerd started with our config?
    read_argv "$1"
    [ "${#ARGV[@]}" -gt 0 ] || return 1
    [ "${ARGV[0]##*/}" = containerd ] || return 1
    local i
    for ((i = 1; i < ${#ARGV[@]}; i++)); do
        case "${ARGV[i]}" in
            --config | -c) [ "${ARGV[i + 1]:-}" = "$CONFIG" ] && return 0 ;;
            --config="$CONFIG" | -c="$CONFIG") return 0 ;;
        esac
    done
    return 1
}

is_our_shim() { # is_our_shim PID -- a containerd shim serving our socket?
    read_argv "$1"
    [ "${#ARGV[@]}" -gt 0 ] || return 1
    [[ "${ARGV[0]##*/}" == containerd-shim* ]] || return 1
    local i
    for ((i = 1; i < ${#ARGV[@]}; i++)); do
        if [ "${ARGV[i]}" = -address ] || [ "${ARGV[i]}" = --address ]; then
            [ "${ARGV[i + 1]:-}" = "$SOCK" ] && return 0
        fi
    done
    return 1
}

daemon_pids() { # print the pids of our containerd (normally one)
    local p
    # Fast path: the pid file, if it still names our daemon.
    if [ -r "$PIDFILE" ]; then
        read -r p <"$PIDFILE" || p=
        if [ -n "$p" ] && alive "$p" && is_our_daemon "$p"; then
            echo "$p"
            return 0
        fi
    fi
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if is_our_daemon "$p" && alive "$p"; then echo "$p"; fi
    done
}

shim_pids() { # print the pids of every shim that reports to our socket
    local p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if is_our_shim "$p" && alive "$p"; then echo "$p"; fi
    done
}

descendant_pids() { # descendant_pids PID... -- all live descendants (not the PIDs)
    local -A kids=()
    local p line ppid
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        read -r line 2>/dev/null <"/proc/$p/stat" || continue
        line=${line##*) } # "S PPID PGRP ..."
        line=${line#* }
        ppid=${line%% *}
        kids[$ppid]+=" $p"
    done
    local -a queue=("$@")
    while [ "${#queue[@]}" -gt 0 ]; do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        for line in ${kids[$p]:-}; do
            echo "$line"
            queue+=("$line")
        done
    done
}

wait_gone() { # wait_gone SECONDS PID... -- true when all are gone in time
    local limit=$1 p left
    shift
    local deadline=$((SECONDS + limit))
    while :; do
        left=0
        for p in "$@"; do
            if alive "$p"; then left=1; break; fi
        done
        [ "$left" = 0 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.05
    done
}

# ---- locking ----------------------------------------------------------------------

# One operation at a time per DIR.  The lock file lives in DIR; fd 9 must be
# closed for the daemon we start, or it would hold the lock forever.
LOCKED=0
lock_dir() {
    [ "$LOCKED" = 1 ] && return 0
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 120 9 || die "timed out waiting for the lock on $DIR"
    fi
    LOCKED=1
}

# ---- config ------------------------------------------------------------------------

# Write DIR/config.toml: containerd's own defaults with the handful of values
# that make the instance private and usable in this VM replaced.  Each edit
# names the TOML table it belongs in; an edit whose key is not found is an
# error, so a changed default file cannot silently leave a value unset.
write_config() {
    local cri='plugins."io.containerd.grpc.v1.cri"'
    local runc_opts="$cri.containerd.runtimes.runc.options"
    local edits
    # Plugins we never use; skipping them saves work (aufs would even try to
    # load a kernel module) and keeps /opt/containerd from being created.
    local disabled='["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]'
    edits=$(
        printf '%s\t%s\t%s\n' \
            "" root "\"$DIR/root\"" \
            "" state "\"$DIR/state\"" \
            "" disabled_plugins "$disabled" \
            grpc address "\"$SOCK\"" \
            ttrpc address "\"$SOCK.ttrpc\"" \
            debug address "\"$DIR/debug.sock\"" \
            debug level "\"$LOG_LEVEL\"" \
            "$cri" restrict_oom_score_adj true \
            "$cri" sandbox_image "\"$SANDBOX_IMAGE\"" \
            "$cri" stream_server_address '"127.0.0.1"' \
            "$cri" stream_server_port '"0"' \
            "$cri" systemd_cgroup false \
            "$cri" disable_tcp_service true \
            "$cri.cni" bin_dir "\"$DIR/cni/bin\"" \
            "$cri.cni" conf_dir "\"$DIR/cni/net.d\"" \
            "$runc_opts" SystemdCgroup false \
            "$runc_opts" Root "\"$DIR/state/runc\""
    )
    containerd config default >"$CONFIG.default"
    awk -v edits="$edits" '
        BEGIN {
            n = split(edits, lines, "\n")
            for (i = 1; i <= n; i++) {
                split(lines[i], f, "\t")
                want[f[1] SUBSEP f[2]] = f[3]
            }
            section = ""
        }
        # A table header such as [plugins."io.containerd.grpc.v1.cri".cni]
        /^[ \t]*\[/ {
            section = $0
            sub(/^[ \t]*\[+/, "", section)
            sub(/\]+[ \t]*$/, "", section)
            print
            next
        }
        # key = value inside the current table
        /^[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*=/ {
            indent = $0; sub(/[^ \t].*$/, "", indent)
            key = $0; sub(/^[ \t]*/, "", key); sub(/[ \t]*=.*$/, "", key)
            if ((section SUBSEP key) in want) {
                print indent key " = " want[section SUBSEP key]
                done[section SUBSEP key] = 1
                next
            }
        }
        { print }
        END {
            bad = 0
            for (k in want) if (!(k in done)) {
                split(k, parts, SUBSEP)
                printf "config: key %s not found in table [%s]\n", parts[2], parts[1] > "/dev/stderr"
                bad = 1
            }
            exit bad
        }
    ' "$CONFIG.default" >"$CONFIG.tmp" || die "could not adapt the default config"
    mv -f "$CONFIG.tmp" "$CONFIG"
    rm -f "$CONFIG.default"
}

# ---- start ---------------------------------------------------------------------------

answers() { # does the daemon answer on our socket?
    [ -S "$SOCK" ] && ctr --address "$SOCK" --connect-timeout 2s --timeout 5s version >/dev/null 2>&1
}

# Import the sandbox image unless this instance already has it.  The archive
# is built once per DIR and kept, so a restart or a second start is cheap.
ensure_image() {
    if ctr_ images ls -q 2>/dev/null | grep -xF "$SANDBOX_IMAGE" >/dev/null; then
        return 0
    fi
    local tarball=$DIR/images/busybox.tar
    if [ ! -s "$tarball" ]; then
        mkdir -p "$DIR/images"
        bash "$HERE/mkimage.sh" "$tarball" "$SANDBOX_IMAGE" >/dev/null
    fi
    ctr_ images import "$tarball" >/dev/null
    ctr_ images ls -q | grep -xF "$SANDBOX_IMAGE" >/dev/null || die "image $SANDBOX_IMAGE missing after import"
}

cmd_start() {
    set_paths "$1"
    lock_dir
    local pids
    pids=$(daemon_pids)
    if [ -n "$pids" ] && answers; then
        # Already running: nothing to start, just make sure of the image.
        ensure_image
        echo "$SOCK"
        return 0
    fi
    if [ -n "$pids" ]; then
        # Alive but deaf (hung, or still booting from another caller that
        # gave up): wait for it a little, else replace it.
        local deadline=$((SECONDS + START_TIMEOUT))
        while ! answers && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if answers; then
            ensure_image
            echo "$SOCK"
            return 0
        fi
        note "daemon $pids does not answer; killing it"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 10 $pids || die "daemon $pids would not die"
    fi

    touch "$DIR/$MARKER"
    mkdir -p "$DIR/root" "$DIR/state" "$DIR/cni/bin" "$DIR/cni/net.d" "$DIR/images"
    write_config

    # containerd clears a stale socket file itself, but a stale pid file
    # could mislead the fast path above, so drop it now.
    rm -f "$PIDFILE"
    {
        echo "---- $(date -u +%FT%TZ) starting containerd"
    } >>"$LOGFILE"
    # setsid: the daemon gets its own session, so a Ctrl-C or a process-group
    # kill aimed at the caller does not take it down half way; `stop` is the
    # way to end it.  No stdio is shared with the caller (which may be
    # reading our stdout through a pipe), and fd 9 (the lock) is closed.
    # CONTAINERD_ADDRESS in the caller's environment would override the
    # socket in our config (the daemon reads it as its --address flag), so
    # it is dropped, as is a systemd NOTIFY_SOCKET meant for someone else.
    setsid env -u CONTAINERD_ADDRESS -u CONTAINERD_NAMESPACE -u NOTIFY_SOCKET \
        containerd --config "$CONFIG" </dev/null >>"$LOGFILE" 2>&1 9>&- &
    local launched=$!

    local deadline=$((SECONDS + START_TIMEOUT)) pid=
    while :; do
        if [ -z "$pid" ]; then
            # setsid normally execs in place, so $! is the daemon; if it had
            # to fork, find the daemon by its command line instead.
            if alive "$launched" && is_our_daemon "$launched"; then
                pid=$launched
            else
                pid=$(daemon_pids | head -n1)
            fi
            [ -n "$pid" ] && echo "$pid" >"$PIDFILE"
        fi
        if [ -n "$pid" ] && answers; then
            break
        fi
        if [ -n "$pid" ] && ! alive "$pid"; then
            tail -n 20 "$LOGFILE" >&2 || true
            die "containerd exited during start-up (log: $LOGFILE)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$LOGFILE" >&2 || true
            die "containerd did not answer on $SOCK within ${START_TIMEOUT}s (log: $LOGFILE)"
        fi
        sleep 0.05
    done

    ensure_image
    echo "$SOCK"
}

# ---- kill / stop --------------------------------------------------------------------

cmd_kill() {
    set_paths "$1"
    [ -d "$DIR" ] || return 0
    lock_dir
    local pids
    pids=$(daemon_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 10 $pids || die "daemon $pids survived SIGKILL"
    fi
    rm -f "$PIDFILE"
}

# Remove, through the still-running daemon, every task and container in
# every namespace.  This is the orderly way (runc deletes its cgroups and
# state, containerd unmounts root file systems and drops snapshots); the
# sweep in cmd_stop catches whatever is left when this cannot be done.
remove_containers_via_api() {
    local ns ids
    for ns in $(ctr --address "$SOCK" --timeout 10s namespaces ls -q 2>/dev/null); do
        ids=$(ctr --address "$SOCK" --namespace "$ns" --timeout 10s containers ls -q 2>/dev/null) || continue
        [ -n "$ids" ] || continue
        # Up to 16 at once: `tasks rm -f` SIGKILLs and deletes a running task.
        # shellcheck disable=SC2016
        printf '%s\n' "$ids" | xargs -r -P 16 -I{} sh -c '
            ctr --address "$1" --namespace "$2" --timeout 10s tasks rm -f "$3" >/dev/null 2>&1
            ctr --address "$1" --namespace "$2" --timeout 10s containers rm "$3" >/dev/null 2>&1
            exit 0' _ "$SOCK" "$ns" {}
    done
}

# After the daemon is gone: for each task bundle still on disk, let runc
# force-delete the container (it kills what is left in its cgroups and
# removes the cgroups and its state), then forget the shim's socket.
sweep_bundles() {
    local tasks=$DIR/state/io.containerd.runtime.v2.task
    local bundle ns id root addr
    [ -d "$tasks" ] || return 0
    for bundle in "$tasks"/*/*; do
        [ -d "$bundle" ] || continue
        id=${bundle##*/}
        ns=${bundle%/*}
        ns=${ns##*/}
        # CRI containers keep runc state in our folder; containers made by
        # plain `ctr run` use runc's shared default root, where we only act
        # on entries whose recorded bundle is ours.
        for root in "$DIR/state/runc/$ns" "/run/containerd/runc/$ns"; do
            [ -f "$root/$id/state.json" ] || continue
            grep -qF "bundle=$bundle\"" "$root/$id/state.json" || continue
            timeout 10 runc --root "$root" delete --force "$id" >/dev/null 2>&1 || true
        done
        # The shim's socket lives in /run/containerd/s/<hash>; the bundle
        # records which one.  A SIGKILLed shim leaves it behind.
        if [ -r "$bundle/address" ]; then
            read -r addr <"$bundle/address" || addr=
            addr=${addr#unix://}
            case "$addr" in
                /run/containerd/s/*) [ -S "$addr" ] && rm -f "$addr" ;;
            esac
        fi
    done
}

# Mount points at or below DIR, newest first, spelled as in mountinfo
# (which escapes space, tab, newline and backslash as \ooo octal).
mounts_under() {
    local esc=${DIR//\\/\\134}
    esc=${esc// /\\040}
    esc=${esc//$'\t'/\\011}
    esc=${esc//$'\n'/\\012}
    # Field 5 is the mount point; mountinfo lists mounts oldest first.
    # (Passed through the environment: awk -v would decode the escapes.)
    MOUNT_PREFIX=$esc awk '
        BEGIN { d = ENVIRON["MOUNT_PREFIX"] }
        $5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | tac
}

# Unmount everything at or below DIR.  Newest first undoes stacked mounts in
# the right order; a lazy unmount is the fallback from the second pass on.
unmount_all() {
    local pass raw mp
    local -a mps
    for pass in 1 2 3 4 5; do
        mapfile -t mps < <(mounts_under)
        [ "${#mps[@]}" -eq 0 ] && return 0
        for raw in "${mps[@]}"; do
            printf -v mp '%b' "$raw" # undo the octal escapes
            umount "$mp" 2>/dev/null || { [ "$pass" -ge 2 ] && umount -l "$mp" 2>/dev/null; } || true
        done
    done
    note "mounts left under $DIR:"
    mounts_under >&2
    return 1
}

cmd_stop() {
    set_paths "$1"
    [ -d "$DIR" ] || return 0
    lock_dir
    local pids shims kids

    # 1. Orderly removal while the daemon still answers.
    pids=$(daemon_pids)
    if [ -n "$pids" ] && answers; then
        remove_containers_via_api
    fi

    # 2. The daemon: SIGTERM, then SIGKILL after 10 s.
    pids=$(daemon_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        if ! wait_gone 10 $pids; then
            note "containerd ignored SIGTERM; sending SIGKILL"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
            # shellcheck disable=SC2086
            wait_gone 10 $pids || note "containerd $pids survived SIGKILL"
        fi
    fi
    rm -f "$PIDFILE"

    # 3. Containers whose tasks were not removed above (daemon killed
    #    earlier, or the API calls failed): let runc delete them.
    sweep_bundles

    # 4. Shims of this instance, and anything still running below them
    #    (a container's processes are children of its shim).
    shims=$(shim_pids)
    if [ -n "$shims" ]; then
        # shellcheck disable=SC2086
        kids=$(descendant_pids $shims)
        if [ -n "$kids" ]; then
            # shellcheck disable=SC2086
            kill -KILL $kids 2>/dev/null || true
        fi
        # shellcheck disable=SC2086
        kill -KILL $shims 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 10 $shims $kids || note "some shim processes survived SIGKILL"
        # A second runc pass, now that nothing holds the containers.
        sweep_bundles
    fi

    # 5. Mounts (overlay root file systems, /dev/shm of sandboxes, ...).
    unmount_all || true
    rm -f "$SOCK" "$SOCK.ttrpc" "$DIR/debug.sock"
}

cmd_clean() {
    set_paths "$1"
    [ -e "$DIR" ] || return 0
    # Refuse to delete a folder this script did not create.
    if [ ! -e "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
        die "$DIR was not made by containerd.sh (no $MARKER); not deleting it"
    fi
    cmd_stop "$DIR"
    # Refuse to recurse through a mount we failed to remove.
    if [ -n "$(mounts_under)" ]; then
        die "mounts remain under $DIR; not deleting it"
    fi
    rm -rf --one-file-system -- "$DIR"
}

cmd_status() {
    set_paths "$1"
    local pids
    pids=$(daemon_pids 2>/dev/null || true)
    if [ -n "$pids" ] && answers; then
        echo "running pid=$pids sock=$SOCK"
        return 0
    fi
    echo "not running"
    return 1
}

# ---- main --------------------------------------------------------------------------------

# `ctr DIR ARGS...`: a convenience wrapper, handy in tests and by hand.
if [ "${1:-}" = ctr ] && [ "$#" -ge 3 ]; then
    set_paths "$2"
    shift 2
    if [ "$1" = run ]; then
        shift
        mkdir -p "$DIR/fifo"
        set -- run --runc-root "$DIR/state/runc" --fifo-dir "$DIR/fifo" "$@"
    fi
    exec ctr --address "$SOCK" --namespace "$NS" "$@"
fi

[ "$#" -eq 2 ] || usage
case "$1" in
    start) cmd_start "$2" ;;
    stop) cmd_stop "$2" ;;
    kill) cmd_kill "$2" ;;
    restart)
        cmd_kill "$2"
        cmd_start "$2"
        ;;
    clean) cmd_clean "$2" ;;
    status) cmd_status "$2" ;;
    sock)
        set_paths "$2"
        echo "$SOCK"
        ;;
    *) usage ;;
esac
