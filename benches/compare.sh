#!/usr/bin/env bash
# Side-by-side benchmark of petrel and Mosquitto on this machine.
#
# Starts both brokers on free 127.0.0.1 ports with comparable limits, runs
# every scenario of `petrel bench` at QoS 0, 1 and 2 against each of them
# with the same arguments, and prints markdown tables with both results and
# the ratio petrel / mosquitto. Both brokers are stopped on exit.
#
# Usage: benches/compare.sh [--quick] [--mosquitto-only] [--no-build]
#                           [--repeat N] [--rate N] [--protocol 4|5]
#                           [--out DIR]
#
#   --quick           smaller runs, one repetition (about 1-2 minutes
#                     instead of about 8)
#   --repeat N        repetitions of every run (default 3, quick 1); the
#                     tables show medians, and lost/dup summed over them
#   --mosquitto-only  compare Mosquitto with a second Mosquitto (checks the
#                     script itself when petrel cannot serve yet)
#   --no-build        use the existing release binary
#   --rate N          offered load (msg/s published) for the equal-load
#                     latency runs; default 5000 (fan-out: N/10 published)
#   --protocol 4|5    MQTT 3.1.1 (default) or 5.0
#   --out DIR         where the raw JSON lines and the tables are written
#                     (default target/bench/compare-<time>)
#
# Environment: CARGO_TARGET_DIR is honoured; PETREL_BIN and BENCH_BIN
# override the broker binary and the load generator binary (both default to
# the release build of petrel).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
MOSQ_ONLY=0
BUILD=1
RATE=5000
PROTOCOL=4
OUT=""
REPEAT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --mosquitto-only) MOSQ_ONLY=1 ;;
        --no-build) BUILD=0 ;;
        --rate) RATE=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --protocol) PROTOCOL=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
OUT=${OUT:-$TARGET_DIR/bench/compare-$(date +%Y%m%d-%H%M%S)}
command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }

# Run sizes. Throughput runs offer unlimited load; latency runs offer the
# same fixed rate to both brokers for about LAT_SECS seconds.
if [ "$QUICK" = 1 ]; then
    FANIN_PUBS=4;  FANIN_MSGS=5000
    FANOUT_SUBS=8; FANOUT_MSGS=2000
    PAIRS=8;       PAIRS_MSGS=1000
    IDLE_CONNS=1000; IDLE_HOLD=3
    LAT_SECS=2
    REPEAT=${REPEAT:-1}
else
    FANIN_PUBS=8;   FANIN_MSGS=10000
    FANOUT_SUBS=16; FANOUT_MSGS=3000
    PAIRS=32;       PAIRS_MSGS=1000
    IDLE_CONNS=10000; IDLE_HOLD=5
    LAT_SECS=3
    REPEAT=${REPEAT:-3}
fi
INFLIGHT=20 # equal to both brokers' inflight limit (see below)

WORK=$(mktemp -d /tmp/petrel-compare.XXXXXX)
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

# Idle runs need one descriptor per connection in the broker and here.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { echo "[compare] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$BENCH_BIN" ] || { echo "load generator not found: $BENCH_BIN" >&2; exit 1; }

# Broker A is petrel (or a second Mosquitto); broker B is Mosquitto.
if [ "$MOSQ_ONLY" = 1 ]; then A_NAME=mosquitto-a; else A_NAME=petrel; fi
B_NAME=mosquitto
A_PORT=$(free_port)
B_PORT=$(free_port)
while [ "$B_PORT" = "$A_PORT" ]; do B_PORT=$(free_port); done
A_PID=""
B_PID=""

mosquitto_conf() { # port file
    cat > "$2" <<EOF
listener $1 127.0.0.1
allow_anonymous true
max_inflight_messages 20
max_queued_messages 1000
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
}

start_a() {
    if [ "$MOSQ_ONLY" = 1 ]; then
        mosquitto_conf "$A_PORT" "$WORK/a.conf"
        mosquitto -c "$WORK/a.conf" >>"$WORK/a.log" 2>&1 &
    else
        mkdir -p "$WORK/petrel-data"
        # The queue limit Mosquitto gets (petrel's default is far deeper).
        env PETREL_LIMITS__MAX_QUEUED_MESSAGES=1000 \
            "$PETREL_BIN" serve -c "$ROOT/config/petrel.toml" -p "$A_PORT" \
            --data-dir "$WORK/petrel-data" >>"$WORK/a.log" 2>&1 &
    fi
    A_PID=$!
    PIDS+=("$A_PID")
    wait_listening "$A_PORT" "$A_PID" || { tail -20 "$WORK/a.log" >&2; echo "$A_NAME did not start" >&2; exit 1; }
}
start_b() {
    mosquitto_conf "$B_PORT" "$WORK/b.conf"
    mosquitto -c "$WORK/b.conf" >>"$WORK/b.log" 2>&1 &
    B_PID=$!
    PIDS+=("$B_PID")
    wait_listening "$B_PORT" "$B_PID" || { tail -20 "$WORK/b.log" >&2; echo "mosquitto did not start" >&2; exit 1; }
}

start_a
start_b
log "$A_NAME on 127.0.0.1:$A_PORT (pid $A_PID), $B_NAME on 127.0.0.1:$B_PORT (pid $B_PID)"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
NOTES=()

# Restarts a broker that died during a run, so the remaining runs go on.
ensure_alive() {
    if ! kill -0 "$A_PID" 2>/dev/null; then
        NOTES+=("$A_NAME exited during: $1 (log tail: $(tail -3 "$WORK/a.log" | tr '\n' ' '))")
        log "$A_NAME died during $1; restarting"
        start_a
    fi
    if ! kill -0 "$B_PID" 2>/dev/null; then
        NOTES+=("$B_NAME exited during: $1")
        log "$B_NAME died during $1; restarting"
        start_b
    fi
}

# bench SIDE ARGS... -> one JSON line on stdout (or an error object)
bench() {
    local side=$1; shift
    local port pid name
    if [ "$side" = A ]; then port=$A_PORT; pid=$A_PID; name=$A_NAME
    else port=$B_PORT; pid=$B_PID; name=$B_NAME; fi
    local out
    if out=$("$BENCH_BIN" bench --host 127.0.0.1 --port "$port" --broker-pid "$pid" \
            --label "$name" --protocol "$PROTOCOL" --max-inflight "$INFLIGHT" \
            --timeout 60 --json "$@" 2>"$WORK/bench.err"); then
        echo "$out"
    else
        local err
        err=$(tr '\n"' ' ' < "$WORK/bench.err")
        echo "{\"label\":\"$name\",\"bench_error\":\"$err\"}"
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
# ratio A B -> A/B with 2 decimals, or "-"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
int() { [ -z "$1" ] && echo "-" || awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
ms() { [ -z "$1" ] && echo "-" || awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }
kb() { [ -z "$1" ] && echo "-" || awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }

# Runs one configuration REPEAT times against both brokers; the order
# alternates so that neither broker always goes first. The JSON lines of
# this configuration are kept in $WORK/A.runs and $WORK/B.runs.
RUN_NO=0
pair() {
    local what=$1; shift
    : > "$WORK/A.runs"
    : > "$WORK/B.runs"
    log "$what"
    for _ in $(seq 1 "$REPEAT"); do
        RUN_NO=$((RUN_NO + 1))
        if [ $((RUN_NO % 2)) = 1 ]; then
            bench A "$@" >> "$WORK/A.runs"; ensure_alive "$what"
            bench B "$@" >> "$WORK/B.runs"; ensure_alive "$what"
        else
            bench B "$@" >> "$WORK/B.runs"; ensure_alive "$what"
            bench A "$@" >> "$WORK/A.runs"; ensure_alive "$what"
        fi
    done
    cat "$WORK/A.runs" "$WORK/B.runs" >> "$RESULTS"
    local r f
    while read -r r; do
        for f in bench_error first_error; do
            f=$(jget "$r" "$f")
            [ -n "$f" ] && NOTES+=("$what, $(jget "$r" label): $f")
        done
    done < <(cat "$WORK/A.runs" "$WORK/B.runs")
    return 0
}

# values SIDE KEY -> the key's non-empty values over this configuration's runs
values() {
    local r
    while read -r r; do jget "$r" "$2"; done < "$WORK/$1.runs" | grep -v '^$' || true
}
# med SIDE KEY -> median; tot SIDE KEY -> sum (empty when no run had it)
med() {
    values "$1" "$2" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
tot() { values "$1" "$2" | awk '{ s += $1; n++ } END { if (n) print s; else print "" }'; }

# Shows "a / b" counts.
pairc() { echo "$(int "$1") / $(int "$2")"; }
# Table cells for one metric: A, B and A/B, from medians.
cells() { local f=${2:-int}; echo "$($f "$(med A "$1")") | $($f "$(med B "$1")") | $(ratio "$(med A "$1")" "$(med B "$1")")"; }

SCEN_ARGS() { # scenario -> its size arguments for a throughput run
    case "$1" in
        fan-in)  echo "--publishers $FANIN_PUBS --messages $FANIN_MSGS" ;;
        fan-out) echo "--subscribers $FANOUT_SUBS --messages $FANOUT_MSGS" ;;
        pairs)   echo "--pairs $PAIRS --messages $PAIRS_MSGS" ;;
    esac
}
LAT_ARGS() { # scenario -> size and rate arguments for an equal-load run
    local r=$RATE
    case "$1" in
        fan-in)  echo "--publishers $FANIN_PUBS --rate $r --messages $(( r * LAT_SECS / FANIN_PUBS ))" ;;
        fan-out) r=$(( RATE / 10 )); echo "--subscribers $FANOUT_SUBS --rate $r --messages $(( r * LAT_SECS ))" ;;
        pairs)   echo "--pairs $PAIRS --rate $r --messages $(( r * LAT_SECS / PAIRS ))" ;;
    esac
}

START=$(date +%s)
A=$A_NAME
B=$B_NAME

# 1. Idle connections first, on freshly started brokers, so that memory
#    freed by earlier runs does not hide the growth.
#    Once only: a broker keeps the memory of closed connections for reuse,
#    so a second run would measure almost no growth.
SAVED_REPEAT=$REPEAT
REPEAT=1
pair "idle x$IDLE_CONNS" --scenario idle --connections "$IDLE_CONNS" --hold "$IDLE_HOLD"
REPEAT=$SAVED_REPEAT
IDLE_TABLE="| connections | established $A / $B | failed $A / $B | RSS before kB $A / $B | RSS held kB $A / $B | bytes per connection $A | $B | ratio |
|---|---|---|---|---|---|---|---|
| $IDLE_CONNS | $(pairc "$(med A established)" "$(med B established)") | $(pairc "$(tot A failed)" "$(tot B failed)") | $(kb "$(med A rss_before_kb)") / $(kb "$(med B rss_before_kb)") | $(kb "$(med A rss_after_kb)") / $(kb "$(med B rss_after_kb)") | $(cells rss_per_conn_bytes) |"

# 2. Throughput with unlimited offered load, and 3. latency at equal load.
TP_TABLE="| scenario | QoS | delivered msg/s $A | $B | ratio | acked msg/s $A | $B | ratio | p99 ms $A | $B | lost $A / $B | dup $A / $B |
|---|---|---|---|---|---|---|---|---|---|---|---|"
LAT_TABLE="| scenario | QoS | offered msg/s | delivered msg/s $A / $B | p50 ms $A | $B | ratio | p99 ms $A | $B | ratio | p99.9 ms $A | $B | ratio | lost $A / $B | dup $A / $B |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for scen in fan-in fan-out pairs; do
    for qos in 0 1 2; do
        # shellcheck disable=SC2046
        pair "$scen QoS $qos unlimited" --scenario "$scen" --qos "$qos" $(SCEN_ARGS "$scen")
        TP_TABLE+="
| $scen | $qos | $(cells delivered_rate) | $(cells ack_rate) | $(ms "$(med A p99_us)") | $(ms "$(med B p99_us)") | $(pairc "$(tot A lost)" "$(tot B lost)") | $(pairc "$(tot A duplicated)" "$(tot B duplicated)") |"

        # shellcheck disable=SC2046
        pair "$scen QoS $qos paced" --scenario "$scen" --qos "$qos" $(LAT_ARGS "$scen")
        LAT_TABLE+="
| $scen | $qos | $(med A rate) | $(int "$(med A delivered_rate)") / $(int "$(med B delivered_rate)") | $(cells p50_us ms) | $(cells p99_us ms) | $(cells p999_us ms) | $(pairc "$(tot A lost)" "$(tot B lost)") | $(pairc "$(tot A duplicated)" "$(tot B duplicated)") |"
    done
done
ELAPSED=$(( $(date +%s) - START ))

MODE=full; [ "$QUICK" = 1 ] && MODE=quick
REPORT="## $A vs $B ($MODE run, MQTT protocol level $PROTOCOL, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED}s)

Sizes: fan-in $FANIN_PUBS publishers x $FANIN_MSGS messages -> 1 subscriber; fan-out 1 publisher x $FANOUT_MSGS messages -> $FANOUT_SUBS subscribers; pairs $PAIRS x $PAIRS_MSGS messages; 64-byte payloads; publisher window $INFLIGHT.
Each configuration ran $REPEAT time(s) per broker, alternating which broker went first; rates and latencies are medians, lost and dup are totals over the repetitions.
Ratios are $A / $B: above 1 is better for throughput, below 1 is better for latency and memory.

### Memory per idle connection
$IDLE_TABLE

### Throughput (unlimited offered load)
$TP_TABLE

### Latency at equal offered load
$LAT_TABLE"
if [ "${#NOTES[@]}" -gt 0 ]; then
    REPORT+="

### Errors reported by the load generator"
    for n in "${NOTES[@]}"; do REPORT+="
- $n"; done
fi

echo "$REPORT" | tee "$OUT/report.md"
log "raw results in $RESULTS, tables in $OUT/report.md"
