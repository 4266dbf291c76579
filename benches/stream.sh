#!/usr/bin/env bash
# Streams: what a stream's guarantees (every message appended durably to a
# partition, each key's order kept for a consumer group, offsets committed
# as members acknowledge) cost next to plain MQTT fan-in.
#
# Starts, on free 127.0.0.1 ports, with durability on everywhere:
#
#   petrel-stream-iN  petrel, durability = "sync", one stream `bench`
#                     (filter bench/#, key topic:1, 8 partitions,
#                     start latest, max_inflight_per_partition N), for
#                     each N of --inflight (default 1 and 64: at 1 a
#                     partition waits for each acknowledgement, so the
#                     round trip bounds its throughput)
#   petrel            petrel, durability = "sync", no stream (MQTT fan-in,
#                     whose topics bench/... would otherwise feed it)
#   mosquitto         Mosquitto, persistence true (MQTT fan-in)
#
# and runs, with the same publishers against each, twice: with unlimited
# offered load (how fast messages are appended or published, even when the
# readers fall behind; latency then includes that backlog), and with at
# most --e2e-window messages on their way from publishers to readers (the
# rate sustained end to end, and the latency of a loaded broker):
#
#   stream            `petrel bench --scenario stream`: 64 publishers at
#                     QoS 1 over 1000 keys (each key has one publisher,
#                     which numbers its messages) into the stream, read by
#                     one consumer group of 4 members
#                     ($share/bench/$stream/bench); counts per-key order
#                     violations
#   fan-in clean      `petrel bench --scenario fan-in --members 4`: the
#                     same publishers, each on its own topic, into one
#                     shared subscription ($share/bench/...) of 4 members
#                     with clean sessions: nothing is stored
#   fan-in persistent the same with persistent member sessions, so the
#                     broker stores every message until a member has it
#
# Every broker sends at most 20 unacknowledged messages per session and
# queues up to 1000000, more than a run publishes, so lost must be 0.
# A full run takes about 4 minutes, a quick one about 40 seconds.
#
# Usage: benches/stream.sh [--quick] [--no-build] [--repeat N]
#                          [--inflight N]... [--messages N] [--qos 0|1|2]
#                          [--e2e-window N] [--window N] [--protocol 4|5]
#                          [--out DIR]
#
#   --quick         smaller runs, one repetition
#   --repeat N      repetitions of every run (default 3, quick 1); the
#                   tables show medians, and lost/dup/order summed
#   --inflight N    the stream's max_inflight_per_partition; repeat the
#                   option for several streams (default 1 and 64)
#   --messages N    messages per publisher (default 5000, quick 1000)
#   --qos N         QoS of every publish and subscription (default 1)
#   --e2e-window N  messages on their way end to end in the flow-controlled
#                   runs (default 2000); 0 leaves those runs out
#   --window N      every broker's outbound window per session (petrel
#                   max_inflight, Mosquitto max_inflight_messages) and the
#                   publishers' window (default 20)
#   --no-build      use the existing release binary
#   --protocol 4|5  MQTT 3.1.1 (default) or 5.0
#   --out DIR       where the raw JSON lines, broker logs and the tables are
#                   written (default target/bench/stream-<time>)
#
# Environment: CARGO_TARGET_DIR is honoured; PETREL_BIN and BENCH_BIN
# override the broker binary and the load generator binary (both default to
# the release build of petrel).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
BUILD=1
PROTOCOL=4
QOS=1
E2E=2000
OUT=""
REPEAT=""
MESSAGES=""
WINDOW=""
INFLIGHTS=()

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --repeat) REPEAT=$2; shift ;;
        --inflight) INFLIGHTS+=("$2"); shift ;;
        --window) WINDOW=$2; shift ;;
        --messages) MESSAGES=$2; shift ;;
        --qos) QOS=$2; shift ;;
        --e2e-window) E2E=$2; shift ;;
        --protocol) PROTOCOL=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,64p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
OUT=${OUT:-$TARGET_DIR/bench/stream-$(date +%Y%m%d-%H%M%S)}
command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }

[ "${#INFLIGHTS[@]}" -gt 0 ] || INFLIGHTS=(1 64)
[[ "$E2E" =~ ^[0-9]+$ ]] || { echo "--e2e-window $E2E: give a whole number" >&2; exit 2; }
for n in "${INFLIGHTS[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--inflight $n: give a whole number of at least 1" >&2; exit 2; }
done
PUBLISHERS=64
KEYS=1000
MEMBERS=4
PARTITIONS=8
STREAM=bench
WINDOW=${WINDOW:-20} # every broker's outbound window, and the publishers' window
[[ "$WINDOW" =~ ^[1-9][0-9]*$ ]] || { echo "--window $WINDOW: give a whole number of at least 1" >&2; exit 2; }
QUEUE_LIMIT=1000000
if [ "$QUICK" = 1 ]; then
    MESSAGES=${MESSAGES:-1000}
    REPEAT=${REPEAT:-1}
else
    MESSAGES=${MESSAGES:-5000}
    REPEAT=${REPEAT:-3}
fi
if [ $(( PUBLISHERS * MESSAGES )) -gt "$QUEUE_LIMIT" ]; then
    echo "--messages $MESSAGES: $PUBLISHERS x $MESSAGES exceeds the queue limit of $QUEUE_LIMIT," \
        "so a slow member could lose messages by design" >&2
    exit 2
fi
# Generous: at one message in flight per partition a stream is slow.
RUN_TIMEOUT=300

WORK=$(mktemp -d /tmp/petrel-stream.XXXXXX)
chmod 755 "$WORK" # Mosquitto drops root privileges
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[stream] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$PETREL_BIN" ] || { echo "petrel not found: $PETREL_BIN" >&2; exit 1; }
[ -x "$BENCH_BIN" ] || { echo "load generator not found: $BENCH_BIN" >&2; exit 1; }

# A run is a configuration and a load: CONFIG@unlimited or CONFIG@window.
BROKERS=()
CONFIGS=()
for n in "${INFLIGHTS[@]}"; do
    BROKERS+=("petrel-stream-i$n")
    CONFIGS+=("stream-i$n")
done
BROKERS+=(petrel mosquitto)
CONFIGS+=(fanin-clean-petrel fanin-clean-mosquitto fanin-persistent-petrel fanin-persistent-mosquitto)
LOADS=(unlimited)
[ "$E2E" != 0 ] && LOADS+=(window)
declare -A PORT PID
NOTES=()

broker_of() { # run -> the broker it runs against
    case "${1%@*}" in
        stream-i*) echo "petrel-${1%@*}" ;;
        *-petrel) echo petrel ;;
        *-mosquitto) echo mosquitto ;;
    esac
}

start_petrel() { # broker [inflight per partition]
    local b=$1 dir=$WORK/$1-data
    mkdir -p "$dir"
    cat > "$WORK/$b.toml" <<EOF
data_dir = "$dir"
durability = "sync"

[[listeners]]
bind = "127.0.0.1:${PORT[$b]}"

[limits]
max_inflight = $WINDOW
max_queued_messages = $QUEUE_LIMIT
EOF
    if [ $# -gt 1 ]; then
        cat >> "$WORK/$b.toml" <<EOF

[[streams]]
name = "$STREAM"
filters = ["$STREAM/#"]
partitions = $PARTITIONS
key = "topic:1"
start = "latest"
max_inflight_per_partition = $2
EOF
    fi
    "$PETREL_BIN" serve -c "$WORK/$b.toml" >>"$WORK/$b.log" 2>&1 &
    PID[$b]=$!
    PIDS+=("${PID[$b]}")
}

start_mosquitto() { # broker
    local b=$1 dir=$WORK/$1-data
    mkdir -p "$dir"
    chmod 1777 "$dir" # written by the unprivileged mosquitto user
    cat > "$WORK/$b.conf" <<EOF
listener ${PORT[$b]} 127.0.0.1
allow_anonymous true
max_inflight_messages $WINDOW
max_queued_messages $QUEUE_LIMIT
persistence true
persistence_location $dir/
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
    mosquitto -c "$WORK/$b.conf" >>"$WORK/$b.log" 2>&1 &
    PID[$b]=$!
    PIDS+=("${PID[$b]}")
}

start() { # broker
    local b=$1
    case "$b" in
        petrel-stream-i*) start_petrel "$b" "${b#petrel-stream-i}" ;;
        petrel) start_petrel "$b" ;;
        mosquitto) start_mosquitto "$b" ;;
    esac
    if wait_listening "${PORT[$b]}" "${PID[$b]}"; then
        return 0
    fi
    tail -20 "$WORK/$b.log" >&2
    echo "$b did not start" >&2
    exit 1
}

for b in "${BROKERS[@]}"; do
    PORT[$b]=$(free_port)
    start "$b"
    log "$b on 127.0.0.1:${PORT[$b]} (pid ${PID[$b]})"
done
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

# Restarts a broker that died during a run, so the remaining runs go on.
ensure_alive() { # broker
    local b=$1
    if ! kill -0 "${PID[$b]}" 2>/dev/null; then
        NOTES+=("$b exited during a run (log tail: $(tail -3 "$WORK/$b.log" | tr '\n' ' '))")
        log "$b died; restarting"
        start "$b"
    fi
}

# bench RUN -> one JSON line on stdout (or an error object)
bench() {
    local r=$1 b out err
    b=$(broker_of "$r")
    local what=(--scenario fan-in --members "$MEMBERS")
    case "$r" in
        stream-i*) what=(--scenario stream --stream "$STREAM" --keys "$KEYS" --members "$MEMBERS") ;;
        fanin-persistent-*) what+=(--persistent) ;;
    esac
    [ "${r#*@}" = window ] && what+=(--e2e-window "$E2E")
    if out=$("$BENCH_BIN" bench --host 127.0.0.1 --port "${PORT[$b]}" --broker-pid "${PID[$b]}" \
            --label "$r" --protocol "$PROTOCOL" --qos "$QOS" --max-inflight "$WINDOW" \
            --timeout "$RUN_TIMEOUT" --json --publishers "$PUBLISHERS" --messages "$MESSAGES" \
            "${what[@]}" 2>"$WORK/bench.err"); then
        echo "$out"
    else
        err=$(tr '\n"' ' ' < "$WORK/bench.err")
        echo "{\"label\":\"$r\",\"bench_error\":\"$err\"}"
    fi
}

# jget JSON KEY -> value (flat objects only; null or missing -> empty)
jget() {
    local v
    v=$(sed -n 's/.*"'"$2"'":\("[^"]*"\|[^,}]*\).*/\1/p' <<<"$1")
    v=${v#\"}; v=${v%\"}
    [ "$v" = null ] && v=""
    echo "$v"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
int() { [ -z "$1" ] && echo "-" || awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
ms() { [ -z "$1" ] && echo "-" || awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }

# values RUN KEY -> the key's non-empty values over the run's repetitions
values() {
    local r
    while read -r r; do jget "$r" "$2"; done < "$WORK/$1.runs" | grep -v '^$' || true
}
med() {
    values "$1" "$2" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
tot() { values "$1" "$2" | awk '{ s += $1; n++ } END { if (n) print s; else print "" }'; }
# Published msg/s: acknowledged (for a stream: appended) at QoS 1 and 2,
# sent at QoS 0, which has no acknowledgement.
published() { if [ "$QOS" = 0 ]; then med "$1" publish_rate; else med "$1" ack_rate; fi; }

RUNS=()
for load in "${LOADS[@]}"; do
    for c in "${CONFIGS[@]}"; do RUNS+=("$c@$load"); done
done
for r in "${RUNS[@]}"; do : > "$WORK/$r.runs"; done
START=$(date +%s)
# Each repetition starts with the next configuration, so that none always
# goes first (or last, after the machine has warmed up).
n=${#CONFIGS[@]}
for load in "${LOADS[@]}"; do
    for rep in $(seq 1 "$REPEAT"); do
        for i in $(seq 0 $(( n - 1 ))); do
            r=${CONFIGS[$(( (rep - 1 + i) % n ))]}@$load
            log "run $rep/$REPEAT: $r"
            bench "$r" >> "$WORK/$r.runs"
            ensure_alive "$(broker_of "$r")"
        done
    done
done
ELAPSED=$(( $(date +%s) - START ))

for r in "${RUNS[@]}"; do
    cat "$WORK/$r.runs" >> "$RESULTS"
    while read -r line; do
        for f in bench_error first_error; do
            f=$(jget "$line" "$f")
            [ -n "$f" ] && NOTES+=("$r: $f")
        done
    done < "$WORK/$r.runs"
    for f in foreign timed_out; do
        v=$(tot "$r" "$f")
        if [ -n "$v" ] && [ "$v" != 0 ]; then NOTES+=("$r: $f $v"); fi
    done
done

scenario_of() { # run -> the table's scenario cell
    case "$1" in
        stream-i*) echo "stream, $PARTITIONS partitions, $MEMBERS members, inflight $(sed 's/^stream-i//; s/@.*//' <<<"$1") per partition" ;;
        fanin-clean-*) echo "fan-in, \$share of $MEMBERS, clean sessions" ;;
        fanin-persistent-*) echo "fan-in, \$share of $MEMBERS, persistent sessions" ;;
    esac
}
broker_cell() { # run -> the table's broker cell
    case "$(broker_of "$1")" in
        mosquitto) echo "mosquitto (persistence true)" ;;
        *) echo "petrel (sync)" ;;
    esac
}
load_title() { # load -> its section title
    case "$1" in
        unlimited) echo "Unlimited offered load" ;;
        window) echo "At most $E2E messages on their way end to end (\`--e2e-window $E2E\`)" ;;
    esac
}
load_name() { # load -> how the verdicts name it
    case "$1" in
        unlimited) echo "unlimited offered load" ;;
        window) echo "at most $E2E end to end" ;;
    esac
}
ratio_row() { # name A B
    echo "| $1 | $(ratio "$(published "$2")" "$(published "$3")") | $(ratio "$(med "$2" delivered_rate)" "$(med "$3" delivered_rate)") | $(ratio "$(med "$2" p50_us)" "$(med "$3" p50_us)") | $(ratio "$(med "$2" p99_us)" "$(med "$3" p99_us)") |"
}

# DESIGN §11: at least 200k msg/s appended under sync and consumed by one
# group of 4 members, per-key order intact.
TARGET=200000
SECTIONS=""
VERDICTS=""
for load in "${LOADS[@]}"; do
    table="| scenario | broker | published msg/s | consumed msg/s | p50 ms | p99 ms | lost | dup | order violations |
|---|---|---|---|---|---|---|---|---|"
    for c in "${CONFIGS[@]}"; do
        r=$c@$load
        table+="
| $(scenario_of "$r") | $(broker_cell "$r") | $(int "$(published "$r")") | $(int "$(med "$r" delivered_rate)") | $(ms "$(med "$r" p50_us)") | $(ms "$(med "$r" p99_us)") | $(int "$(tot "$r" lost)") | $(int "$(tot "$r" duplicated)") | $(int "$(tot "$r" out_of_order)") |"
    done
    ratios="| ratio | published msg/s | consumed msg/s | p50 | p99 |
|---|---|---|---|---|"
    for n in "${INFLIGHTS[@]}"; do
        ratios+="
$(ratio_row "stream inflight $n / petrel fan-in clean" "stream-i$n@$load" "fanin-clean-petrel@$load")
$(ratio_row "stream inflight $n / petrel fan-in persistent" "stream-i$n@$load" "fanin-persistent-petrel@$load")
$(ratio_row "stream inflight $n / mosquitto fan-in persistent" "stream-i$n@$load" "fanin-persistent-mosquitto@$load")"
    done
    ratios+="
$(ratio_row "petrel / mosquitto, fan-in clean" "fanin-clean-petrel@$load" "fanin-clean-mosquitto@$load")
$(ratio_row "petrel / mosquitto, fan-in persistent" "fanin-persistent-petrel@$load" "fanin-persistent-mosquitto@$load")"
    SECTIONS+="

### $(load_title "$load")
$table

Ratios (throughput: above 1 is better; latency: below 1 is better):

$ratios"
    for n in "${INFLIGHTS[@]}"; do
        r=stream-i$n@$load
        app=$(published "$r"); con=$(med "$r" delivered_rate); ord=$(tot "$r" out_of_order)
        verdict=$(awk -v a="${app:-0}" -v c="${con:-0}" -v t="$TARGET" -v o="${ord:-1}" \
            'BEGIN { if (a >= t && c >= t && o == 0) print "met"; else print "missed" }')
        VERDICTS+="
- $(load_name "$load"), inflight $n per partition: $(int "$app") appended, $(int "$con") consumed msg/s, ${ord:--} order violations: **$verdict**"
    done
done

MODE=full; [ "$QUICK" = 1 ] && MODE=quick
REPORT="## Streams vs MQTT fan-in ($MODE run, MQTT protocol level $PROTOCOL, QoS $QOS, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED}s)

$PUBLISHERS publishers x $MESSAGES messages at QoS $QOS, 64-byte payloads, publisher window $WINDOW.
Stream: \`petrel bench --scenario stream --publishers $PUBLISHERS --keys $KEYS --members $MEMBERS --messages $MESSAGES\` into stream \`$STREAM\` (filter \`$STREAM/#\`, key \`topic:1\`, $PARTITIONS partitions), read by consumer group \`bench\` of $MEMBERS members; each key has one publisher, and an order violation is a member receiving a key's sequence number below one it already had, other than a copy it already had (counted as dup).
Fan-in: \`petrel bench --scenario fan-in --publishers $PUBLISHERS --members $MEMBERS --messages $MESSAGES [--persistent]\`, each publisher on its own topic, one shared subscription \`\$share/bench/...\` of $MEMBERS members; an order violation is a member receiving a publisher's sequence number below one it already had.
petrel: \`durability = \"sync\"\`; Mosquitto: \`persistence true\` (written at autosave and exit, not as messages arrive). Every broker: $WINDOW messages in flight and $QUEUE_LIMIT queued per session.
Each run went $REPEAT time(s), the first configuration rotating between repetitions; rates and latencies are medians, lost, dup and order violations are totals over the repetitions. Published is acknowledged by the broker (for the stream: appended), consumed is distinct messages received by the group per second, first to last receive; latency is publish to first receipt. With unlimited offered load publishers may run ahead of the readers, so published can exceed consumed and latency includes the backlog; with a window both are the rate sustained end to end.$SECTIONS

### Target (DESIGN §11: at least $TARGET msg/s appended under sync and consumed by one group of $MEMBERS, per-key order intact)
${VERDICTS#$'\n'}"
if [ "${#NOTES[@]}" -gt 0 ]; then
    REPORT+="

### Notes"
    for note in "${NOTES[@]}"; do REPORT+="
- $note"; done
fi

for b in "${BROKERS[@]}"; do cp "$WORK/$b.log" "$OUT/$b.log" 2>/dev/null || true; done
echo "$REPORT" | tee "$OUT/report.md"
log "raw results in $RESULTS, tables in $OUT/report.md"
