#!/usr/bin/env bash
# Bridging to a remote Mosquitto: how many QoS 1 messages a second petrel's
# `[[bridges]]` forwards, and how fast it catches up on the backlog of an
# outage, next to Mosquitto's own bridge doing the same on this machine.
#
# Two topologies, one after the other, each on fresh brokers, free
# 127.0.0.1 ports and fresh data directories:
#
#   petrel      publishers -> petrel P -> remote Mosquitto R -> subscriber
#               P: the release binary (copied to a temporary directory
#               first), durability "sync" (the default: a PUBACK only once
#               the message is on disk), one bridge `bench` to R with the
#               out rule bench/# at QoS 1, clean_start false,
#               max_inflight --bridge-inflight, restart_backoff [1, 5].
#   mosquitto   publishers -> Mosquitto M -> remote Mosquitto R' -> subscriber
#               M: a bridge `connection bench`, `topic bench/# out 1`,
#               cleansession false, restart_timeout 1 5,
#               max_inflight_messages --bridge-inflight, and
#               max_queued_messages 10000000 so that its bridge queue does
#               not drop during the outage (the default of 1000 would).
#               Mosquitto has no per-message durability: with persistence
#               it snapshots its whole in-memory database every
#               autosave_interval seconds. By default M runs without
#               persistence, its bridge queue in memory only (Mosquitto's
#               fastest case, so the ratio is conservative for petrel);
#               --mosquitto-autosave S turns persistence on with a snapshot
#               every S seconds (still not a per-message guarantee).
#
# Both bridges speak MQTT 3.1.1 by default (Mosquitto's default; petrel's
# is 5.0, see --protocol). R and R' are the same Mosquitto configuration:
# persistence on, saved when it stops, max_inflight_messages 100, no queue
# limit. Each topology runs two phases:
#
#   forward   a clean subscriber on the remote (bench/# QoS 1); --publishers
#             connections publish --messages messages in all (64-byte
#             payload carrying a sequence number, QoS 1, --inflight
#             unacknowledged per connection, unpaced) to the local broker.
#             Publish rate: first PUBLISH to last PUBACK; forward rate:
#             first to last arrival at the remote; lost, duplicated and
#             out-of-order messages from the sequence numbers.
#   catch-up  a persistent subscriber (clean session 0) on the remote; the
#             publishers offer --rate msg/s for --lead + --outage seconds;
#             --lead seconds in, the remote is stopped (SIGTERM, so that it
#             saves the subscriber's session and anything it had accepted:
#             a loss then belongs to the bridge); when the publishers are
#             done it is started again on the same port and data directory.
#             Backlog: the messages that first arrive after the restart;
#             catch-up rate: backlog / (its first to last arrival); drain
#             time: restart to the last arrival.
#
# Broker CPU in the catch-up phase is mostly the cost of durability: at
# 1000 msg/s petrel under "sync" has little to group per commit (about one
# fdatasync per two messages here, as it does for a local persistent
# subscriber), while Mosquitto keeps the queue in memory.
#
# A subscriber stops when every message arrived, or 20 s after the last
# arrival once publishing is done (the idle time is more than the bridges'
# 5 s backoff cap). Load averages are read before and after each topology,
# broker CPU time (utime + stime) from /proc/PID/stat around each phase,
# petrel's view of its bridge from GET /v1/bridges/bench.
#
# Usage: benches/bridge.sh [--no-build] [--messages N] [--outage S]
#                          [--rate R] [--lead S] [--publishers K]
#                          [--inflight W] [--bridge-inflight W]
#                          [--protocol 311|5] [--mosquitto-autosave S]
#                          [--only petrel|mosquitto] [--out DIR]
#
#   --messages N           forward phase messages (default 100000)
#   --outage S             seconds the remote is down (default 60)
#   --rate R               catch-up phase offered msg/s (default 1000)
#   --lead S               seconds of live traffic before the outage (default 5)
#   --publishers K         publisher connections (default 4)
#   --inflight W           unacknowledged messages per publisher (default 100)
#   --bridge-inflight W    the bridges' inflight window (default 100, petrel's
#                          default max_inflight)
#   --protocol 311|5       the bridges' MQTT version (default 311)
#   --mosquitto-autosave S local Mosquitto with persistence, a snapshot every
#                          S seconds (default: no persistence)
#   --only TOPOLOGY        run only `petrel` or only `mosquitto`
#   --no-build             use the existing release binary
#   --out DIR              report, broker logs and raw JSON (default
#                          target/bench/bridge-<time>)
#
# The clients (benches/bridge.py, plain-socket MQTT 3.1.1) and the remote
# share the machine with the broker under test, so compare the two columns
# of one run rather than absolute figures across machines.
#
# A full run takes about 2.5 minutes plus the build. Environment:
# CARGO_TARGET_DIR, PETREL_BIN as in benches/common.sh; PYTHON (default
# python3); mosquitto on PATH (/usr/sbin is added).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARGS="$*"
BUILD=1
MESSAGES=100000
OUTAGE=60
RATE=1000
LEAD=5
PUBLISHERS=4
INFLIGHT=100
BRIDGE_INFLIGHT=100
PROTOCOL=311
MOSQ_AUTOSAVE=""
ONLY=""
OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --messages) MESSAGES=$2; shift ;;
        --outage) OUTAGE=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --lead) LEAD=$2; shift ;;
        --publishers) PUBLISHERS=$2; shift ;;
        --inflight) INFLIGHT=$2; shift ;;
        --bridge-inflight) BRIDGE_INFLIGHT=$2; shift ;;
        --protocol) PROTOCOL=$2; shift ;;
        --mosquitto-autosave) MOSQ_AUTOSAVE=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,90p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
export PATH="$PATH:/usr/sbin"
PYTHON=${PYTHON:-python3}
DRIVER="$ROOT/benches/bridge.py"
OUT=${OUT:-$TARGET_DIR/bench/bridge-$(date +%Y%m%d-%H%M%S)}
for v in "$MESSAGES" "$OUTAGE" "$RATE" "$LEAD" "$PUBLISHERS" "$INFLIGHT" "$BRIDGE_INFLIGHT" ${MOSQ_AUTOSAVE:+"$MOSQ_AUTOSAVE"}; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "$v: give a whole number of at least 1" >&2; exit 2; }
done
case "$PROTOCOL" in
    311) PETREL_PROTOCOL=mqttv311; MOSQ_PROTOCOL=mqttv311 ;;
    5) PETREL_PROTOCOL=mqttv5; MOSQ_PROTOCOL=mqttv50 ;;
    *) echo "--protocol $PROTOCOL: give 311 or 5" >&2; exit 2 ;;
esac
TOPOLOGIES=(petrel mosquitto)
case "$ONLY" in
    "") ;;
    petrel|mosquitto) TOPOLOGIES=("$ONLY") ;;
    *) echo "--only $ONLY: give petrel or mosquitto" >&2; exit 2 ;;
esac
command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }
CATCHUP_MESSAGES=$(( RATE * (LEAD + OUTAGE) ))
IDLE=20 # seconds a subscriber waits for more once publishing is done

WORK=$(mktemp -d /tmp/petrel-bridge.XXXXXX)
chmod 755 "$WORK" # Mosquitto drops root privileges
LOCAL_PID=""
REMOTE_PID=""
SUB_PID=""
PUB_PID=""
stop_pid() { # pid: SIGTERM and wait, if it still runs
    if [ -n "$1" ]; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop_pid "$PUB_PID"
    stop_pid "$SUB_PID"
    stop_pid "$LOCAL_PID"
    stop_pid "$REMOTE_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[bridge] $*" >&2; }
die() { log "$*"; exit 1; }

if [ "$BUILD" = 1 ] && [[ " ${TOPOLOGIES[*]} " == *" petrel "* ]]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin petrel)
fi
if [[ " ${TOPOLOGIES[*]} " == *" petrel "* ]]; then
    [ -x "$PETREL_BIN" ] || die "petrel not found: $PETREL_BIN"
    # A build running in target/ meanwhile must not swap the binary under us.
    cp "$PETREL_BIN" "$WORK/petrel"
    PETREL_VERSION=$("$WORK/petrel" --version 2>/dev/null || echo "petrel ?")
fi
MOSQ_VERSION=$(mosquitto -h 2>/dev/null | head -1 || true)
mkdir -p "$OUT"

now() { date +%s.%N; }
load() { awk '{ print $1, $2, $3 }' /proc/loadavg; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
CLK_TCK=$(getconf CLK_TCK)
cpu_s() { # PID -> utime + stime in seconds (empty when gone)
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo ""; return; }
    sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / hz }'
}
add() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { printf "%.2f", a + b }'; }
sub_() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { printf "%.2f", a - b }'; }

# Results, keyed TOPOLOGY.KEY.
declare -A R
# absorb PREFIX JSON: every flat key of the object into R[PREFIX.key]
absorb() {
    local k v
    while IFS=$'\t' read -r k v; do R[$1.$k]=$v; done < <("$PYTHON" -c '
import json, sys
for k, v in json.loads(sys.argv[1]).items():
    if isinstance(v, (dict, list)):
        v = json.dumps(v)
    print(k + "\t" + ("" if v is None else str(v)))' "$2")
}

remote_conf() { # PORT DATADIR FILE
    cat > "$3" <<EOF
listener $1 127.0.0.1
allow_anonymous true
persistence true
persistence_location $2/
autosave_interval 0
max_inflight_messages 100
max_queued_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
EOF
}

local_mosquitto_conf() { # PORT REMOTE_PORT DATADIR FILE
    {
        echo "listener $1 127.0.0.1"
        echo "allow_anonymous true"
        if [ -n "$MOSQ_AUTOSAVE" ]; then
            echo "persistence true"
            echo "persistence_location $3/"
            echo "autosave_interval $MOSQ_AUTOSAVE"
        else
            echo "persistence false"
        fi
        cat <<EOF
max_inflight_messages $BRIDGE_INFLIGHT
max_queued_messages 10000000
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice

connection bench
address 127.0.0.1:$2
bridge_protocol_version $MOSQ_PROTOCOL
topic bench/# out 1
cleansession false
restart_timeout 1 5
EOF
    } > "$4"
}

petrel_conf() { # PORT ADMIN_PORT REMOTE_PORT DATADIR FILE
    cat > "$5" <<EOF
data_dir = "$4"
durability = "sync"

[[listeners]]
bind = "127.0.0.1:$1"

[admin]
bind = "127.0.0.1:$2"

[[bridges]]
name = "bench"
address = "127.0.0.1:$3"
protocol = "$PETREL_PROTOCOL"
clean_start = false
restart_backoff = [1, 5]
max_inflight = $BRIDGE_INFLIGHT
topics = [ { pattern = "bench/#", direction = "out", qos = 1 } ]
EOF
}

# wait_port PORT PID: like common.sh's wait_listening, polled every 20 ms
# (the restart time is measured from it), for up to 30 s.
wait_port() {
    for _ in $(seq 1 1500); do
        kill -0 "$2" 2>/dev/null || return 1
        listening "$1" && return 0
        sleep 0.02
    done
    return 1
}

start_remote() { # TOPOLOGY
    mosquitto -c "$WORK/$1-remote.conf" >>"$OUT/$1-remote.log" 2>&1 &
    REMOTE_PID=$!
    wait_port "$REMOTE_PORT" "$REMOTE_PID" || { tail -20 "$OUT/$1-remote.log" >&2; die "$1: the remote Mosquitto did not start"; }
}

start_local() { # TOPOLOGY
    if [ "$1" = petrel ]; then
        "$WORK/petrel" serve -c "$WORK/petrel.toml" >>"$OUT/petrel-local.log" 2>&1 &
    else
        mosquitto -c "$WORK/mosquitto-local.conf" >>"$OUT/mosquitto-local.log" 2>&1 &
    fi
    LOCAL_PID=$!
    wait_port "$LOCAL_PORT" "$LOCAL_PID" || { tail -20 "$OUT/$1-local.log" >&2; die "$1: the local broker did not start"; }
}

bridge_status() { # TOPOLOGY PREFIX: petrel's GET /v1/bridges/bench into R
    [ "$1" = petrel ] || return 0
    local json
    json=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/v1/bridges/bench" 2>/dev/null) || { R[$1.$2_api]="unavailable"; return 0; }
    echo "$json" >"$OUT/petrel-$2-bridge.json"
    absorb "$1.$2" "$json"
}

# remote CPU adds up over the remote's restarts
REMOTE_CPU_DONE=0
remote_cpu() { add "$REMOTE_CPU_DONE" "$(cpu_s "$REMOTE_PID")"; }

start_subscriber() { # TOPOLOGY PHASE EXPECT [--persistent]
    local t=$1 phase=$2 expect=$3
    shift 3
    rm -f "$WORK/ready" "$WORK/arm"
    "$PYTHON" "$DRIVER" subscribe "$REMOTE_PORT" --client-id "bench-bridge-sub-$phase" \
        --out "$OUT/$t-$phase-arrivals.txt" --expect "$expect" --ready "$WORK/ready" \
        --arm "$WORK/arm" --idle "$IDLE" --timeout $(( LEAD + OUTAGE + 900 )) "$@" \
        >"$OUT/$t-$phase-subscriber.json" 2>"$WORK/sub.err" &
    SUB_PID=$!
    for _ in $(seq 1 200); do
        [ -f "$WORK/ready" ] && return 0
        kill -0 "$SUB_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK/sub.err" >&2
    die "$t $phase: the subscriber did not subscribe"
}

finish_subscriber() { # TOPOLOGY PHASE
    touch "$WORK/arm"
    wait "$SUB_PID" || { cat "$WORK/sub.err" >&2; die "$1 $2: the subscriber failed"; }
    SUB_PID=""
    absorb "$1.$2_sub" "$(cat "$OUT/$1-$2-subscriber.json")"
}

run_topology() { # TOPOLOGY
    local t=$1 out cpu_l cpu_r started t_kill t_restart
    LOCAL_PORT=$(free_port)
    REMOTE_PORT=$(free_port)
    while [ "$REMOTE_PORT" = "$LOCAL_PORT" ]; do REMOTE_PORT=$(free_port); done
    ADMIN_PORT=$(free_port)
    while [ "$ADMIN_PORT" = "$LOCAL_PORT" ] || [ "$ADMIN_PORT" = "$REMOTE_PORT" ]; do ADMIN_PORT=$(free_port); done
    mkdir -p "$WORK/$t-remote-data" "$WORK/$t-local-data"
    chmod 777 "$WORK/$t-remote-data" "$WORK/$t-local-data"
    remote_conf "$REMOTE_PORT" "$WORK/$t-remote-data" "$WORK/$t-remote.conf"
    if [ "$t" = petrel ]; then
        petrel_conf "$LOCAL_PORT" "$ADMIN_PORT" "$REMOTE_PORT" "$WORK/$t-local-data" "$WORK/petrel.toml"
        cp "$WORK/petrel.toml" "$OUT/petrel.toml"
    else
        local_mosquitto_conf "$LOCAL_PORT" "$REMOTE_PORT" "$WORK/$t-local-data" "$WORK/mosquitto-local.conf"
        cp "$WORK/mosquitto-local.conf" "$OUT/mosquitto-local.conf"
    fi
    cp "$WORK/$t-remote.conf" "$OUT/$t-remote.conf"
    REMOTE_CPU_DONE=0
    R[$t.load_start]=$(load)

    start_remote "$t"
    start_local "$t"
    log "$t: local on 127.0.0.1:$LOCAL_PORT (pid $LOCAL_PID), remote Mosquitto on 127.0.0.1:$REMOTE_PORT (pid $REMOTE_PID)"
    R[$t.probe_s]=$("$PYTHON" "$DRIVER" probe "$LOCAL_PORT" "$REMOTE_PORT" --timeout 60) \
        || { tail -20 "$OUT/$t-local.log" >&2; die "$t: nothing crossed the bridge"; }
    log "$t: the bridge forwards (first probe after ${R[$t.probe_s]} s)"

    # Phase 1: forward rate.
    start_subscriber "$t" forward "$MESSAGES"
    cpu_l=$(cpu_s "$LOCAL_PID"); cpu_r=$(remote_cpu)
    log "$t forward: $MESSAGES messages from $PUBLISHERS publishers"
    "$PYTHON" "$DRIVER" publish "$LOCAL_PORT" --run forward --messages "$MESSAGES" \
        --publishers "$PUBLISHERS" --inflight "$INFLIGHT" >"$OUT/$t-forward-publish.json" \
        || log "$t forward: the publishers reported errors (see $OUT/$t-forward-publish.json)"
    finish_subscriber "$t" forward
    R[$t.forward_cpu_local]=$(sub_ "$(cpu_s "$LOCAL_PID")" "$cpu_l")
    R[$t.forward_cpu_remote]=$(sub_ "$(remote_cpu)" "$cpu_r")
    out=$("$PYTHON" "$DRIVER" analyze --publish "$OUT/$t-forward-publish.json" \
        --arrivals "$OUT/$t-forward-arrivals.txt" --messages "$MESSAGES")
    echo "$out" >"$OUT/$t-forward.json"
    absorb "$t.forward" "$out"
    bridge_status "$t" after_forward

    # Phase 2: catch-up after an outage.
    start_subscriber "$t" catchup "$CATCHUP_MESSAGES" --persistent
    cpu_l=$(cpu_s "$LOCAL_PID"); cpu_r=$(remote_cpu)
    log "$t catch-up: $RATE msg/s for ${LEAD} s, then the remote stops for ${OUTAGE} s"
    rm -f "$WORK/started"
    "$PYTHON" "$DRIVER" publish "$LOCAL_PORT" --run catchup --messages "$CATCHUP_MESSAGES" \
        --publishers "$PUBLISHERS" --inflight "$INFLIGHT" --rate "$RATE" \
        --started "$WORK/started" >"$OUT/$t-catchup-publish.json" 2>"$WORK/pub.err" &
    PUB_PID=$!
    until [ -f "$WORK/started" ]; do
        kill -0 "$PUB_PID" 2>/dev/null || { cat "$WORK/pub.err" >&2; die "$t catch-up: the publishers did not start"; }
        sleep 0.02
    done
    started=$(cat "$WORK/started")
    sleep "$(awk -v s="$started" -v l="$LEAD" -v n="$(now)" 'BEGIN { d = s + l - n; printf "%.3f", (d > 0 ? d : 0) }')"
    t_kill=$(now)
    REMOTE_CPU_DONE=$(remote_cpu)
    kill -TERM "$REMOTE_PID"
    wait "$REMOTE_PID" || true
    REMOTE_PID=""
    R[$t.outage_start_load]=$(load)
    # Shortly before the publishers finish: what the local broker holds.
    sleep "$(awk -v s="$started" -v l="$LEAD" -v o="$OUTAGE" -v n="$(now)" 'BEGIN { d = s + l + o - 1 - n; printf "%.3f", (d > 0 ? d : 0) }')"
    bridge_status "$t" outage_end
    R[$t.rss_outage_end_mib]=$(awk -v v="$(rss_kb "$LOCAL_PID")" 'BEGIN { if (v != "") printf "%.1f", v / 1024 }')
    wait "$PUB_PID" || log "$t catch-up: the publishers reported errors: $(cat "$WORK/pub.err")"
    PUB_PID=""
    # The restart counts from the moment the remote is started again.
    t_restart=$(now)
    start_remote "$t"
    R[$t.outage_s]=$(awk -v a="$t_kill" -v b="$t_restart" 'BEGIN { printf "%.1f", b - a }')
    log "$t catch-up: remote back after ${R[$t.outage_s]} s (pid $REMOTE_PID), waiting for the backlog"
    finish_subscriber "$t" catchup
    R[$t.catchup_cpu_local]=$(sub_ "$(cpu_s "$LOCAL_PID")" "$cpu_l")
    R[$t.catchup_cpu_remote]=$(sub_ "$(remote_cpu)" "$cpu_r")
    out=$("$PYTHON" "$DRIVER" analyze --publish "$OUT/$t-catchup-publish.json" \
        --arrivals "$OUT/$t-catchup-arrivals.txt" --messages "$CATCHUP_MESSAGES" \
        --kill "$t_kill" --restart "$t_restart" --subscriber "$OUT/$t-catchup-subscriber.json")
    echo "$out" >"$OUT/$t-catchup.json"
    absorb "$t.catchup" "$out"
    bridge_status "$t" after_catchup
    R[$t.load_end]=$(load)

    stop_pid "$LOCAL_PID"; LOCAL_PID=""
    stop_pid "$REMOTE_PID"; REMOTE_PID=""
    # What the brokers logged beyond the ordinary.
    R[$t.local_log_problems]=$(grep -ciE 'warn|error|panic' "$OUT/$t-local.log" || true)
    R[$t.remote_log_problems]=$(grep -ciE 'warning|error' "$OUT/$t-remote.log" || true)
}

START=$(date +%s)
LOAD_START=$(load)
for t in "${TOPOLOGIES[@]}"; do run_topology "$t"; done
LOAD_END=$(load)
ELAPSED=$(( $(date +%s) - START ))

# -- report ------------------------------------------------------------------

get() { local v=${R[$1]:-}; echo "${v:--}"; }
num() { # KEY [decimals]
    local v=${R[$1]:-}
    [ -z "$v" ] && { echo "-"; return; }
    awk -v v="$v" -v d="${2:-0}" 'BEGIN { printf "%.*f", d, v }'
}
ratio() { # KEY: petrel / mosquitto, 2 decimals, or "-"
    local a=${R[petrel.$1]:-} b=${R[mosquitto.$1]:-}
    awk -v a="$a" -v b="$b" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
row() { # LABEL KEY [decimals]
    echo "| $1 | $(num "petrel.$2" "${3:-0}") | $(num "mosquitto.$2" "${3:-0}") | $(ratio "$2") |"
}
counts() { # LABEL KEY...: "a / b / c" per broker, no ratio
    local label=$1 t cells=() k
    shift
    for t in petrel mosquitto; do
        local parts=()
        for k in "$@"; do parts+=("$(get "$t.$k")"); done
        cells+=("$(IFS=/; echo "${parts[*]}" | sed 's|/| / |g')")
    done
    echo "| $label | ${cells[0]} | ${cells[1]} | - |"
}

FORWARD="| forward phase ($MESSAGES messages, $PUBLISHERS publishers x $INFLIGHT in flight, unpaced) | petrel | mosquitto | petrel / mosquitto |
|---|---|---|---|
$(row "publish-side msg/s (first PUBLISH to last PUBACK)" forward.publish_rate)
$(row "forwarded msg/s at the remote (first to last arrival)" forward.forward_rate)
$(row "end to end msg/s (first PUBLISH to last arrival)" forward.end_to_end_rate)
$(row "last arrival after the last PUBACK, s" forward.last_arrival_after_last_ack_s 2)
$(counts "arrived / lost / duplicates / out of order" forward.arrived forward.lost forward.duplicates forward.reordered)
$(row "CPU s, local broker" forward_cpu_local 2)
$(row "CPU s, remote Mosquitto" forward_cpu_remote 2)"

CATCHUP="| catch-up phase ($RATE msg/s offered, ${LEAD} s live, then ${OUTAGE} s outage) | petrel | mosquitto | petrel / mosquitto |
|---|---|---|---|
$(row "messages published (acknowledged by the local broker)" catchup.acked)
$(row "outage, s (remote stopped to started again)" outage_s 1)
$(row "arrived before the outage ended" catchup.before_restart)
$(row "backlog: first arrival after the restart" catchup.backlog)
$(row "subscriber back on the remote after the restart, s" catchup.subscriber_back_after_restart_s 2)
$(row "first backlog message after the restart, s" catchup.first_backlog_after_restart_s 2)
$(row "catch-up msg/s (backlog / its first to last arrival)" catchup.catchup_rate)
$(row "time to drain, s (restart to last arrival)" catchup.drain_s 2)
$(counts "arrived / lost / duplicates / out of order" catchup.arrived catchup.lost catchup.duplicates catchup.reordered)
$(row "local broker RSS 1 s before the restart, MiB" rss_outage_end_mib 1)
$(row "CPU s, local broker" catchup_cpu_local 2)
$(row "CPU s, remote Mosquitto (both runs)" catchup_cpu_remote 2)"

NOTES=""
for t in "${TOPOLOGIES[@]}"; do
    NOTES+="
- $t: load average $(get "$t.load_start") at the start, $(get "$t.outage_start_load") when the outage began, $(get "$t.load_end") at the end; first probe across the bridge after $(get "$t.probe_s") s; forward subscriber stopped on \"$(get "$t.forward_sub.stopped")\", catch-up subscriber on \"$(get "$t.catchup_sub.stopped")\" after $(get "$t.catchup_sub.connections" | "$PYTHON" -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)) if t not in ("", "-") else "-")') connection(s); publisher errors: forward $(get "$t.forward.publisher_errors"), catch-up $(get "$t.catchup.publisher_errors"); log lines matching warn/error (including ordinary disconnect notices): local broker $(get "$t.local_log_problems"), remote $(get "$t.remote_log_problems")"
done
if [[ " ${TOPOLOGIES[*]} " == *" petrel "* ]]; then
    NOTES+="
- petrel's GET /v1/bridges/bench 1 s before the restart: queued_messages $(get petrel.outage_end.queued_messages), queued_bytes $(get petrel.outage_end.queued_bytes), connected $(get petrel.outage_end.connected); at the end: sent $(get petrel.after_catchup.sent), dropped $(get petrel.after_catchup.dropped), reconnects $(get petrel.after_catchup.reconnects), queued_messages $(get petrel.after_catchup.queued_messages), last_error $(get petrel.after_catchup.last_error)"
fi
MOSQ_PERSIST="no persistence (bridge queue in memory only)"
[ -n "$MOSQ_AUTOSAVE" ] && MOSQ_PERSIST="persistence with a snapshot every $MOSQ_AUTOSAVE s"

SETUP="${PETREL_VERSION:+$PETREL_VERSION, durability sync, \`[[bridges]]\` out bench/# QoS 1; }$MOSQ_VERSION, local bridge with $MOSQ_PERSIST"

REPORT="## Bridge to a remote Mosquitto: petrel vs Mosquitto ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED}s)

$SETUP, max_queued_messages 10000000. Both bridges: MQTT $PROTOCOL, $BRIDGE_INFLIGHT in flight, clean session false, reconnect backoff 1-5 s. Remote: Mosquitto with persistence (saved on SIGTERM), subscriber QoS 1 on bench/#. Payload 64 B, QoS 1 throughout. Load average $LOAD_START at the start, $LOAD_END at the end.

Command: \`benches/bridge.sh $ARGS\`

### Forward rate

$FORWARD

### Catch-up after an outage

$CATCHUP

### Notes${NOTES}"
echo "$REPORT" | tee "$OUT/report.md"
log "report, broker logs and raw JSON in $OUT"
