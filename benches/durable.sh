#!/usr/bin/env bash
# Durable QoS 1 fan-in: what storing every message for an offline-capable
# subscriber costs, in petrel and in Mosquitto.
#
# Starts five brokers on free 127.0.0.1 ports and runs the same fan-in
# against each: 64 publishers at QoS 1 with unlimited offered load, one
# wildcard subscriber with a persistent session (`petrel bench
# --persistent`), so the broker must keep every copy for it:
#
#   petrel-sync        petrel, durability = "sync" (the default), data dir
#                      in a temporary directory
#   petrel-async       petrel, durability = "async" (flush every 100 ms)
#   petrel-memory      petrel, durability = "memory"
#   mosquitto-persist  Mosquitto, persistence true
#   mosquitto-memory   Mosquitto, persistence false (reference)
#
# Every broker queues up to 100000 messages per session and sends at most
# 20 unacknowledged ones, and a run publishes fewer messages than that in
# total, so the subscriber must receive every one of them (lost = 0).
#
# Mosquitto with `persistence true` keeps its state in memory and writes
# it to disk only every autosave_interval (default 1800 s) and at exit, so
# it does not store messages as they arrive; petrel-sync does.
#
# Usage: benches/durable.sh [--quick] [--no-build] [--repeat N]
#                           [--messages N] [--protocol 4|5] [--out DIR]
#
#   --quick         smaller runs, one repetition
#   --repeat N      repetitions of every run (default 3, quick 1); the
#                   tables show medians, and lost/dup summed over them
#   --no-build      use the existing release binary
#   --messages N    messages per publisher (default 1500, quick 500; at
#                   most 1562 so that a run fits the queue limit)
#   --protocol 4|5  MQTT 3.1.1 (default) or 5.0
#   --out DIR       where the raw JSON lines, broker logs and the tables are
#                   written (default target/bench/durable-<time>)
#
# Environment: CARGO_TARGET_DIR is honoured; PETREL_BIN and BENCH_BIN
# override the broker binary and the load generator binary (both default to
# the release build of petrel).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
BUILD=1
PROTOCOL=4
OUT=""
REPEAT=""
MESSAGES=""

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --repeat) REPEAT=$2; shift ;;
        --messages) MESSAGES=$2; shift ;;
        --protocol) PROTOCOL=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
OUT=${OUT:-$TARGET_DIR/bench/durable-$(date +%Y%m%d-%H%M%S)}
command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }

PUBLISHERS=64
INFLIGHT=20        # every broker's outbound window, and the publishers' window
QUEUE_LIMIT=100000 # messages queued per session beyond the window
if [ "$QUICK" = 1 ]; then
    MESSAGES=${MESSAGES:-500}
    REPEAT=${REPEAT:-1}
else
    MESSAGES=${MESSAGES:-1500}
    REPEAT=${REPEAT:-3}
fi
if [ $(( PUBLISHERS * MESSAGES )) -gt "$QUEUE_LIMIT" ]; then
    echo "--messages $MESSAGES: $PUBLISHERS x $MESSAGES exceeds the queue limit of $QUEUE_LIMIT," \
        "so a slow subscriber could lose messages by design" >&2
    exit 2
fi
# Generous: a disk-bound broker may be far slower than the in-memory ones.
RUN_TIMEOUT=300

WORK=$(mktemp -d /tmp/petrel-durable.XXXXXX)
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

log() { echo "[durable] $*" >&2; }


if [ "$BUILD" = 1 ]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$PETREL_BIN" ] || { echo "petrel not found: $PETREL_BIN" >&2; exit 1; }
[ -x "$BENCH_BIN" ] || { echo "load generator not found: $BENCH_BIN" >&2; exit 1; }

TARGETS=(petrel-sync petrel-async petrel-memory mosquitto-persist mosquitto-memory)
declare -A PORT PID
NOTES=()

data_dir() { # target -> the directory its broker writes to
    echo "$WORK/$1-data"
}

start_petrel() { # target mode
    local t=$1 mode=$2 dir
    dir=$(data_dir "$t")
    mkdir -p "$dir"
    env PETREL_LIMITS__MAX_QUEUED_MESSAGES="$QUEUE_LIMIT" PETREL_LIMITS__MAX_INFLIGHT="$INFLIGHT" \
        PETREL_DURABILITY="$mode" "$PETREL_BIN" serve -c "$ROOT/config/petrel.toml" -p "${PORT[$t]}" \
        --data-dir "$dir" >>"$WORK/$t.log" 2>&1 &
    PID[$t]=$!
    PIDS+=("${PID[$t]}")
}

start_mosquitto() { # target persistence
    local t=$1 persist=$2 dir
    dir=$(data_dir "$t")
    mkdir -p "$dir"
    chmod 1777 "$dir" # written by the unprivileged mosquitto user
    cat > "$WORK/$t.conf" <<EOF
listener ${PORT[$t]} 127.0.0.1
allow_anonymous true
max_inflight_messages $INFLIGHT
max_queued_messages $QUEUE_LIMIT
persistence $persist
persistence_location $dir/
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
    mosquitto -c "$WORK/$t.conf" >>"$WORK/$t.log" 2>&1 &
    PID[$t]=$!
    PIDS+=("${PID[$t]}")
}

start() { # target
    local t=$1
    case "$t" in
        petrel-sync) start_petrel "$t" sync ;;
        petrel-async) start_petrel "$t" async ;;
        petrel-memory) start_petrel "$t" memory ;;
        mosquitto-persist) start_mosquitto "$t" true ;;
        mosquitto-memory) start_mosquitto "$t" false ;;
    esac
    if wait_listening "${PORT[$t]}" "${PID[$t]}"; then
        return 0
    fi
    tail -20 "$WORK/$t.log" >&2
    echo "$t did not start" >&2
    exit 1
}

for t in "${TARGETS[@]}"; do
    PORT[$t]=$(free_port)
    start "$t"
    log "$t on 127.0.0.1:${PORT[$t]} (pid ${PID[$t]})"
done
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

# Restarts a broker that died during a run, so the remaining runs go on.
ensure_alive() { # target
    local t=$1
    if ! kill -0 "${PID[$t]}" 2>/dev/null; then
        NOTES+=("$t exited during a run (log tail: $(tail -3 "$WORK/$t.log" | tr '\n' ' '))")
        log "$t died; restarting"
        start "$t"
    fi
}

# Bytes the process has caused to be written to storage (Linux
# /proc/PID/io write_bytes; Mosquitto's autosave writes nothing mid-run).
written() { awk '/^write_bytes:/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }

# bench TARGET -> one JSON line on stdout (or an error object), with the
# bytes written to disk per message published added
bench() {
    local t=$1 out err before
    before=$(written "${PID[$t]}")
    if out=$("$BENCH_BIN" bench --host 127.0.0.1 --port "${PORT[$t]}" --broker-pid "${PID[$t]}" \
            --label "$t" --protocol "$PROTOCOL" --max-inflight "$INFLIGHT" \
            --timeout "$RUN_TIMEOUT" --json --scenario fan-in --qos 1 \
            --publishers "$PUBLISHERS" --messages "$MESSAGES" --persistent 2>"$WORK/bench.err"); then
        per_msg=$(( ($(written "${PID[$t]}") - before) / (PUBLISHERS * MESSAGES) ))
        echo "${out%\}},\"disk_bytes_per_msg\":$per_msg}"
    else
        err=$(tr '\n"' ' ' < "$WORK/bench.err")
        echo "{\"label\":\"$t\",\"bench_error\":\"$err\"}"
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

# values TARGET KEY -> the key's non-empty values over the target's runs
values() {
    local r
    while read -r r; do jget "$r" "$2"; done < "$WORK/$1.runs" | grep -v '^$' || true
}
med() {
    values "$1" "$2" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
tot() { values "$1" "$2" | awk '{ s += $1; n++ } END { if (n) print s; else print "" }'; }

for t in "${TARGETS[@]}"; do : > "$WORK/$t.runs"; done
START=$(date +%s)
# Each repetition starts with the next target, so that no broker always
# runs first (or last, after the machine has warmed up).
n=${#TARGETS[@]}
for rep in $(seq 1 "$REPEAT"); do
    for i in $(seq 0 $(( n - 1 ))); do
        t=${TARGETS[$(( (rep - 1 + i) % n ))]}
        log "run $rep/$REPEAT: $t"
        bench "$t" >> "$WORK/$t.runs"
        ensure_alive "$t"
    done
done
ELAPSED=$(( $(date +%s) - START ))

for t in "${TARGETS[@]}"; do
    cat "$WORK/$t.runs" >> "$RESULTS"
    while read -r r; do
        for f in bench_error first_error; do
            f=$(jget "$r" "$f")
            [ -n "$f" ] && NOTES+=("$t: $f")
        done
    done < "$WORK/$t.runs"
    # A lost message with a queue this large is a finding, not noise: say
    # what the broker and the load generator reported about it.
    lost=$(tot "$t" lost)
    if [ -n "$lost" ] && [ "$lost" != 0 ]; then
        why="timed out runs: $(tot "$t" timed_out), errors: $(tot "$t" errors)"
        drops=$(grep -i -m3 'drop' "$WORK/$t.log" | tr '\n' ' ' || true)
        [ -n "$drops" ] && why+="; broker log: $drops"
        NOTES+=("$t lost $lost of $(tot "$t" expected) messages ($why)")
    fi
    dup=$(tot "$t" duplicated)
    if [ -n "$dup" ] && [ "$dup" != 0 ]; then NOTES+=("$t delivered $dup duplicate(s)"); fi
done

TABLE="| target | acked msg/s | delivered msg/s | p50 ms | p99 ms | ack p50 ms | ack p99 ms | lost | dup | written B/msg | data dir kB |
|---|---|---|---|---|---|---|---|---|---|---|"
for t in "${TARGETS[@]}"; do
    kb=$(du -sk "$(data_dir "$t")" 2>/dev/null | cut -f1)
    TABLE+="
| $t | $(int "$(med "$t" ack_rate)") | $(int "$(med "$t" delivered_rate)") | $(ms "$(med "$t" p50_us)") | $(ms "$(med "$t" p99_us)") | $(ms "$(med "$t" ack_p50_us)") | $(ms "$(med "$t" ack_p99_us)") | $(int "$(tot "$t" lost)") | $(int "$(tot "$t" duplicated)") | $(int "$(med "$t" disk_bytes_per_msg)") | ${kb:--} |"
done

ratio_row() { # name A B
    local k cells=""
    for k in ack_rate delivered_rate p50_us p99_us ack_p99_us; do
        cells+=" $(ratio "$(med "$2" "$k")" "$(med "$3" "$k")") |"
    done
    echo "| $1 |$cells"
}
RATIOS="| ratio | acked msg/s | delivered msg/s | p50 | p99 | ack p99 |
|---|---|---|---|---|---|
$(ratio_row "petrel-sync / petrel-memory" petrel-sync petrel-memory)
$(ratio_row "petrel-async / petrel-memory" petrel-async petrel-memory)
$(ratio_row "petrel-sync / mosquitto-persist" petrel-sync mosquitto-persist)
$(ratio_row "petrel-async / mosquitto-persist" petrel-async mosquitto-persist)
$(ratio_row "petrel-memory / mosquitto-memory" petrel-memory mosquitto-memory)"

MODE=full; [ "$QUICK" = 1 ] && MODE=quick
REPORT="## Durable QoS 1 fan-in ($MODE run, MQTT protocol level $PROTOCOL, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED}s)

$PUBLISHERS publishers x $MESSAGES messages at QoS 1, unlimited offered load, 64-byte payloads, publisher window $INFLIGHT -> 1 subscriber on a \`+\` wildcard with a persistent session (\`petrel bench --scenario fan-in --qos 1 --publishers $PUBLISHERS --messages $MESSAGES --persistent\`).
Every broker: $INFLIGHT messages in flight and $QUEUE_LIMIT queued per session. petrel: \`durability = \"sync\"\` / \`\"async\"\` / \`\"memory\"\` via PETREL_DURABILITY; Mosquitto: \`persistence true\` / \`false\` (with persistence it writes to disk only every autosave_interval, 1800 s by default, and at exit).
Each target ran $REPEAT time(s), the first target rotating between repetitions; rates and latencies are medians, lost and dup are totals over the repetitions. Latency is publish to delivery; ack latency is PUBLISH to PUBACK at the publisher. Written B/msg is what the broker process wrote to storage during a run (/proc/PID/io write_bytes) per message published; data dir is its size after the runs.

### Results
$TABLE

### Ratios (throughput: above 1 is better; latency: below 1 is better)
$RATIOS"
if [ "${#NOTES[@]}" -gt 0 ]; then
    REPORT+="

### Notes"
    for note in "${NOTES[@]}"; do REPORT+="
- $note"; done
fi

for t in "${TARGETS[@]}"; do cp "$WORK/$t.log" "$OUT/$t.log" 2>/dev/null || true; done
echo "$REPORT" | tee "$OUT/report.md"
log "raw results in $RESULTS, tables in $OUT/report.md"
