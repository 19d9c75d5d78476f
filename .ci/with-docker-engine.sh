#!/usr/bin/env bash
# CI only: run a command with a private, offline Docker engine and a Mosquitto image.
#
#   bash .ci/with-docker-engine.sh .venv/bin/pytest tests/test_docker_backend.py -v
#
# Made for the CI machines (Debian 12, root, no internet except the Debian and
# PyPI mirrors, no container registry). It
#   1. installs docker.io with apt-get when dockerd is missing;
#   2. starts its own dockerd (socket, data-root, exec-root and pidfile in a
#      fresh mktemp folder) on no network but loopback: --bridge=none and no
#      iptables, so containers run with --network host;
#   3. builds, without any registry, an image from the host's own
#      /usr/sbin/mosquitto plus the libraries `ldd` lists, tagged
#      mqtt-factory-lab/mosquitto:<version>-local;
#   4. runs the command with DOCKER_HOST, MQTT_LAB_DOCKER_IMAGE,
#      MQTT_LAB_DOCKER_NETWORK=host, MQTT_LAB_BROKER_BACKEND=docker and the
#      testcontainers settings for this engine exported;
#   5. always (exit, Ctrl-C, TERM) removes leftover lab containers, stops the
#      dockerd and containerd it started, by PID, and deletes the folder.
# Signals: Ctrl-C or a TERM to the process group (what terminals and CI runners
# send) reach the command first; its own teardown still finds the engine, then
# the trap cleans up (exit 130/143). A TERM to this script's PID alone takes
# effect when the command ends, as bash defers traps during a foreground command.
# It exits with the command's status. Developers with Docker running need none
# of this: the lab uses their engine and the eclipse-mosquitto image directly.
# Set MQTT_LAB_CI_KEEP_STATE=1 to keep the folder (dockerd log) for debugging.

set -euo pipefail

readonly LABEL=mqtt-factory-lab=1
readonly START_TIMEOUT=${MQTT_LAB_DOCKERD_TIMEOUT:-60}
readonly STOP_TIMEOUT=30

say() { printf '[with-docker-engine] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

if [[ $# -lt 1 ]]; then
    echo "usage: bash $0 COMMAND [ARGS...]" >&2
    echo "  runs COMMAND with a private Docker engine and an offline Mosquitto image" >&2
    exit 2
fi
[[ $(id -u) -eq 0 ]] || die "dockerd needs root; this script is meant for CI machines. \
On a workstation start Docker yourself and run the command directly."

# --- 1. the engine binaries ----------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd is missing: installing docker.io from the Debian mirror"
    # Keep the package from starting the system's own dockerd (on the default
    # bridge, with iptables rules): this script starts the only engine it needs.
    POLICY=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
    fi
    installed=0
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io >/dev/null && installed=1
    [[ -n $POLICY ]] && rm -f "$POLICY"
    [[ $installed -eq 1 ]] || die "apt-get could not install docker.io (is the Debian mirror reachable?)"
fi
command -v docker >/dev/null 2>&1 || die "the docker client is missing although dockerd is installed"
MOSQUITTO=$(command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || die "mosquitto is not installed (apt-get install -y mosquitto); \
the offline image is built from it"

# --- 2. a private dockerd ----------------------------------------------------------
STATE=$(mktemp -d /tmp/mqtt-lab-docker.XXXXXX)
SOCKET="$STATE/docker.sock"
DOCKERD_PID=""
CLEANED=0

cleanup() {
    local status=$?
    [[ $CLEANED -eq 1 ]] && return 0
    CLEANED=1
    set +e
    if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        local leftovers
        leftovers=$(docker -H "unix://$SOCKET" ps -aq --filter "label=$LABEL" 2>/dev/null)
        if [[ -n $leftovers ]]; then
            say "removing leftover lab containers: $(echo "$leftovers" | tr '\n' ' ')"
            # shellcheck disable=SC2086  # one id per word
            docker -H "unix://$SOCKET" rm -f $leftovers >/dev/null
        fi
        local t_stop
        t_stop=$(now)
        stop_pid "$DOCKERD_PID" dockerd
        wait "$DOCKERD_PID" 2>/dev/null
        say "dockerd stopped in $(elapsed "$t_stop")s"
    fi
    # dockerd stops the containerd it supervises; make sure, by its pidfile.
    local containerd_pid
    containerd_pid=$(cat "$STATE/exec/containerd/containerd.pid" 2>/dev/null)
    if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
        stop_pid "$containerd_pid" containerd
    fi
    # Mounts dockerd did not undo would make rm fail (and leak).
    grep -o " $STATE/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null
    done
    if [[ ${MQTT_LAB_CI_KEEP_STATE:-0} == 1 ]]; then
        say "kept $STATE (MQTT_LAB_CI_KEEP_STATE=1)"
    else
        rm -rf "$STATE" || say "warning: could not remove $STATE"
    fi
    return "$status"
}

# stop_pid PID NAME: SIGTERM, wait with a deadline, then SIGKILL.
stop_pid() {
    local pid=$1 name=$2 deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( $(date +%s) >= deadline )); then
            say "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: killing it"
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 0.1  # polling for the process to exit, bounded by the deadline
    done
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo '{}' >"$STATE/daemon.json"  # ignore /etc/docker/daemon.json: this engine is ours alone
T0=$(now)
# In a session of its own, dockerd does not get the Ctrl-C or TERM meant for the
# command: the engine outlives the command's own cleanup, then the trap stops it.
# (Not a process group leader here, so setsid execs in place and $! is dockerd.)
setsid dockerd \
    --host "unix://$SOCKET" \
    --data-root "$STATE/data" \
    --exec-root "$STATE/exec" \
    --pidfile "$STATE/dockerd.pid" \
    --config-file "$STATE/daemon.json" \
    --containerd-namespace mqtt-factory-lab \
    --containerd-plugins-namespace mqtt-factory-lab-plugins \
    --bridge=none --iptables=false --ip6tables=false \
    >"$STATE/dockerd.log" 2>&1 &
DOCKERD_PID=$!

export DOCKER_HOST="unix://$SOCKET"
deadline=$(( $(date +%s) + START_TIMEOUT ))
until docker version >/dev/null 2>&1; do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        say "dockerd exited at start; its log:"
        tail -n 30 "$STATE/dockerd.log" >&2
        exit 2
    fi
    if (( $(date +%s) >= deadline )); then
        say "dockerd did not answer within ${START_TIMEOUT}s; its log:"
        tail -n 30 "$STATE/dockerd.log" >&2
        exit 2
    fi
    sleep 0.1  # polling the socket, bounded by the deadline
done
say "dockerd $(docker version --format '{{.Server.Version}}') (pid $DOCKERD_PID) answered in $(elapsed "$T0")s at $DOCKER_HOST"

# --- 3. an offline Mosquitto image ----------------------------------------------------
VERSION=$("$MOSQUITTO" -h 2>/dev/null | awk '/^mosquitto version/ { print $3; exit }' || true)
[[ -n $VERSION ]] || die "cannot tell the version of $MOSQUITTO (mosquitto -h printed no version line)"
IMAGE="mqtt-factory-lab/mosquitto:${VERSION}-local"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "image $IMAGE is present"
else
    T1=$(now)
    ROOTFS="$STATE/rootfs"
    mkdir -p "$ROOTFS/usr/sbin" "$ROOTFS/etc" "$ROOTFS/mosquitto/config" "$ROOTFS/mosquitto/data" "$ROOTFS/tmp"
    chmod 1777 "$ROOTFS/tmp"
    cp -L "$MOSQUITTO" "$ROOTFS/usr/sbin/mosquitto"
    # Every shared library, and the dynamic loader, at the path the binary expects.
    ldd "$MOSQUITTO" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
        cp -L --parents "$lib" "$ROOTFS/"
    done
    # glibc loads libgcc_s with dlopen when a thread exits (pthread_exit, used by the
    # asynchronous DNS lookup a bridge makes when it reconnects): ldd does not list it,
    # and without it the broker aborts ("libgcc_s.so.1 must be installed for pthread_exit").
    LIBGCC=$(ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64|libgcc_s\.so\.1 \(libc6\)/ { print $NF; exit }')
    [[ -n $LIBGCC ]] || LIBGCC=$(ldconfig -p | awk '/libgcc_s\.so\.1/ { print $NF; exit }')
    [[ -n $LIBGCC ]] || die "libgcc_s.so.1 is missing (apt-get install -y libgcc-s1): a bridging broker needs it"
    cp -L --parents "$LIBGCC" "$ROOTFS/"
    # Mosquitto starts as root and drops to the `mosquitto` user.
    grep -E '^(root|mosquitto):' /etc/passwd >"$ROOTFS/etc/passwd" || true
    grep -E '^(root|mosquitto):' /etc/group >"$ROOTFS/etc/group" || true
    grep -q '^mosquitto:' "$ROOTFS/etc/passwd" ||
        echo 'mosquitto:x:1883:1883:mosquitto:/var/empty:/usr/sbin/nologin' >>"$ROOTFS/etc/passwd"
    grep -q '^mosquitto:' "$ROOTFS/etc/group" || echo 'mosquitto:x:1883:' >>"$ROOTFS/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files\n' >"$ROOTFS/etc/nsswitch.conf"
    chmod 777 "$ROOTFS/mosquitto/data"
    # No ENTRYPOINT: like eclipse-mosquitto, the image runs whatever command it
    # is given (`mosquitto -c /mosquitto/config/mosquitto.conf`), found on PATH.
    tar -C "$ROOTFS" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]' \
        -c 'LABEL org.opencontainers.image.description="host mosquitto, imported offline by .ci/with-docker-engine.sh"' \
        - "$IMAGE" >/dev/null
    rm -rf "$ROOTFS"
    say "built $IMAGE offline from $MOSQUITTO in $(elapsed "$T1")s ($(docker image inspect "$IMAGE" --format '{{.Size}}') bytes)"
fi

# --- 4. the command -----------------------------------------------------------------
export MQTT_LAB_DOCKER_IMAGE="$IMAGE"
export MQTT_LAB_DOCKER_NETWORK=host
export MQTT_LAB_BROKER_BACKEND=docker
export TESTCONTAINERS_RYUK_DISABLED=true  # Ryuk's image cannot be pulled here; the trap cleans up
export TC_HOST=127.0.0.1
export TESTCONTAINERS_CONNECTION_MODE=docker_host
say "engine ready after $(elapsed "$T0")s; running: $*"

set +e
"$@"
STATUS=$?
set -e
say "command exited with status $STATUS; stopping the engine"
exit "$STATUS"
