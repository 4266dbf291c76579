#!/usr/bin/env bash
# Delayed publish at rest and across a restart: what 100 000 pending
# delayed messages cost in memory and on disk, how long a restart takes
# with them stored, and how late they fire with and without a restart in
# between.
#
# Two runs, each on a fresh data directory and a free 127.0.0.1 port, with
# petrel on its embedded default (`petrel serve --data-dir DIR --port P`,
# durability "sync"):
#
#   at rest   benches/delayed.py --publish-only publishes N messages to
#             $delayed/{S..S+spread}/bench-delay/{i} at QoS 1 (so their due
#             times spread over --spread seconds, the first S seconds ahead);
#             the broker's RSS and data directory are read with them
#             pending; delayed.py --receive subscribes and measures lateness.
#   restart   the same publishing, then SIGTERM and a restart on the same
#             data directory, measuring how long the stop takes, when the
#             port listens again and when the first CONNECT is answered,
#             and the RSS once restarted; then the subscriber connects to
#             the restarted broker, still before the first due time, and
#             measures lateness.
#
# RSS is VmRSS from /proc/PID/status: idle before publishing, with every
# message pending, after the restart, and after every message was
# delivered. Lateness is bounded from both sides: arrival minus (PUBACK
# time + delay) from below, arrival minus (the PUBLISH's write + delay)
# from above; the broker fixed the due time in between. The broker also
# serves /metrics on a second free port (PETREL_ADMIN__BIND), read for its
# count of pending delays and its own lateness histogram, which leaves out
# the socket and the subscriber.
#
# Usage: benches/delayed.sh [--no-build] [--quick] [--messages N]
#                           [--spread S] [--start S] [--only at-rest|restart]
#                           [--out DIR]
#
#   --messages N   delayed messages per run (default 100000, quick 10000)
#   --spread S     due times range over S seconds (default 60, quick 10)
#   --start S      the shortest delay: long enough to publish, measure,
#                  stop and restart before the first falls due (default 40,
#                  quick 15)
#   --only RUN     run only `at-rest` or only `restart`
#   --no-build     use the existing release binary
#   --out DIR      where the report, the broker logs and the raw JSON are
#                  written (default target/bench/delayed-<time>)
#
# A full run takes about 4 minutes. Environment: CARGO_TARGET_DIR,
# PETREL_BIN as in benches/common.sh; PYTHON (default python3) with
# paho-mqtt 2.x.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=1
QUICK=0
MESSAGES=""
SPREAD=""
START_DELAY=""
ONLY=""
OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --quick) QUICK=1 ;;
        --messages) MESSAGES=$2; shift ;;
        --spread) SPREAD=$2; shift ;;
        --start) START_DELAY=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$TARGET_DIR/bench/delayed-$(date +%Y%m%d-%H%M%S)}
if [ "$QUICK" = 1 ]; then
    MESSAGES=${MESSAGES:-10000}; SPREAD=${SPREAD:-10}; START_DELAY=${START_DELAY:-15}
else
    MESSAGES=${MESSAGES:-100000}; SPREAD=${SPREAD:-60}; START_DELAY=${START_DELAY:-40}
fi
for v in "$MESSAGES" "$SPREAD" "$START_DELAY"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "$v: give a whole number of at least 1" >&2; exit 2; }
done
RUNS=(at-rest restart)
case "$ONLY" in
    "") ;;
    at-rest|restart) RUNS=("$ONLY") ;;
    *) echo "--only $ONLY: give at-rest or restart" >&2; exit 2 ;;
esac
"$PYTHON" -c 'import paho.mqtt' 2>/dev/null || { echo "paho-mqtt not found (pip install paho-mqtt)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

WORK=$(mktemp -d /tmp/petrel-delayed.XXXXXX)
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[delayed] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$PETREL_BIN" ] || { echo "petrel not found: $PETREL_BIN" >&2; exit 1; }
mkdir -p "$OUT"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
du_kb() { du -sk "$1" | awk '{ print $1 }'; }
load() { awk '{ print $1, $2, $3 }' /proc/loadavg; }

# start_broker RUN DATA PORT: starts petrel and records, in RESULT, how long
# it took until the port listened and until a CONNECT was answered.
declare -A RESULT
start_broker() {
    local run=$1 data=$2 port=$3 t0 answered
    t0=$(now)
    # The admin listener only serves /metrics here: the broker's own
    # count of pending delays and of how late it published each one.
    PETREL_ADMIN__BIND="127.0.0.1:$ADMIN_PORT" \
        "$PETREL_BIN" serve --data-dir "$data" --port "$port" >>"$OUT/$run.log" 2>&1 &
    BROKER_PID=$!
    # The listener is bound before the stored state is loaded, so
    # listening and answering are measured apart.
    "$PYTHON" "$ROOT/benches/delayed.py" "$port" --await-broker --timeout 300 \
        >"$WORK/answered" 2>"$WORK/answered.err" &
    local waiter=$! listened=""
    while kill -0 "$waiter" 2>/dev/null; do
        if [ -z "$listened" ] && listening "$port"; then listened=$(now); fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            kill "$waiter" 2>/dev/null || true
            tail -20 "$OUT/$run.log" >&2
            echo "petrel exited during start-up" >&2
            exit 1
        fi
        sleep 0.01
    done
    wait "$waiter" || { cat "$WORK/answered.err" >&2; exit 1; }
    answered=$(cat "$WORK/answered")
    [ -n "$listened" ] || listened=$answered
    RESULT[$run.listen_s]=$(elapsed "$t0" "$listened")
    RESULT[$run.ready_s]=$(elapsed "$t0" "$answered")
}

stop_broker() { # RUN: SIGTERM, and how long until the process is gone
    local run=$1 t0
    t0=$(now)
    kill -TERM "$BROKER_PID"
    wait "$BROKER_PID" || true
    RESULT[$run.stop_s]=$(elapsed "$t0" "$(now)")
    BROKER_PID=""
}

# metrics -> the broker's pending delays and lateness histogram as JSON:
# pending, published, and the upper bound (ms) of the bucket holding the
# p50, p99, p99.9 and the slowest.
metrics() {
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | "$PYTHON" -c '
import json, sys
pending, buckets = None, []
for line in sys.stdin:
    if line.startswith("petrel_delayed_pending "):
        pending = int(float(line.split()[1]))
    elif line.startswith("petrel_delayed_lateness_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets.append((float("inf") if le == "+Inf" else float(le) * 1000, int(float(line.split()[-1]))))
total = buckets[-1][1] if buckets else 0
def bound(q):
    if not total:
        return None
    for le, count in buckets:
        if count >= q * total:
            return le
out = {"pending": pending, "published": total}
for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)):
    b = bound(q)
    out["broker_" + name + "_le_ms"] = None if b is None else (b if b != float("inf") else "inf")
print(json.dumps(out))'
}

# jget JSON KEY -> value (flat objects only)
jget() {
    "$PYTHON" -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

run_one() { # RUN
    local run=$1 data=$WORK/$1-data port due=$WORK/$1-due.json out
    mkdir -p "$data"
    port=$(free_port)
    ADMIN_PORT=$(free_port)
    while [ "$ADMIN_PORT" = "$port" ]; do ADMIN_PORT=$(free_port); done
    RESULT[$run.load_before]=$(load)
    start_broker "$run-first" "$data" "$port"
    sleep 1
    RESULT[$run.rss_idle]=$(rss_kb "$BROKER_PID")
    log "$run: publishing $MESSAGES delayed messages (pid $BROKER_PID, port $port)"
    out=$("$PYTHON" "$ROOT/benches/delayed.py" "$port" --publish-only "$due" --json \
        --messages "$MESSAGES" --spread "$SPREAD" --start "$START_DELAY")
    echo "$out" >"$OUT/$run-publish.json"
    RESULT[$run.published_s]=$(jget "$out" published_s)
    RESULT[$run.rss_pending]=$(rss_kb "$BROKER_PID")
    RESULT[$run.hwm_pending]=$(hwm_kb "$BROKER_PID")
    RESULT[$run.du_pending]=$(du_kb "$data")
    RESULT[$run.pending]=$(jget "$(metrics)" pending)
    if [ "$run" = restart ]; then
        log "$run: stopping and restarting on the same data directory"
        stop_broker "$run"
        start_broker "$run" "$data" "$port"
        RESULT[$run.rss_restarted]=$(rss_kb "$BROKER_PID")
        RESULT[$run.pending_restarted]=$(jget "$(metrics)" pending)
        sleep 1
        RESULT[$run.rss_restarted_1s]=$(rss_kb "$BROKER_PID")
    fi
    log "$run: receiving (the first falls due at $(date -d "@$(jget "$out" first_due)" +%T))"
    out=$("$PYTHON" "$ROOT/benches/delayed.py" "$port" --receive "$due" --json)
    echo "$out" >"$OUT/$run-receive.json"
    for k in arrived expected duplicates strangers subscribed_before_first_due_s \
            {,send_}{p50_ms,p99_ms,p999_ms,max_ms,min_ms,over_50ms}; do
        RESULT[$run.$k]=$(jget "$out" "$k")
    done
    out=$(metrics)
    echo "$out" >"$OUT/$run-metrics.json"
    for k in published broker_p50_le_ms broker_p99_le_ms broker_p999_le_ms broker_max_le_ms; do
        RESULT[$run.$k]=$(jget "$out" "$k")
    done
    RESULT[$run.rss_delivered]=$(rss_kb "$BROKER_PID")
    RESULT[$run.du_delivered]=$(du_kb "$data")
    RESULT[$run.load_after]=$(load)
    kill -TERM "$BROKER_PID"
    wait "$BROKER_PID" || true
    BROKER_PID=""
}

START=$(date +%s)
for run in "${RUNS[@]}"; do run_one "$run"; done
ELAPSED=$(( $(date +%s) - START ))

get() { local v=${RESULT[$1]:-}; echo "${v:--}"; }
ms() { local v=${RESULT[$1]:-}; [ -z "$v" ] && echo "-" || awk -v v="$v" 'BEGIN { printf "%.1f ms", v }'; }
mib() { local v=${RESULT[$1]:-}; [ -z "$v" ] && echo "-" || awk -v v="$v" 'BEGIN { printf "%.1f MiB", v / 1024 }'; }
secs() { local v=${RESULT[$1]:-}; [ -z "$v" ] && echo "-" || awk -v v="$v" 'BEGIN { printf "%.2f s", v }'; }
bounds() { # KEY -> lateness after PUBACK / after send
    local a=${RESULT[$1.$2]:-} b=${RESULT[$1.send_$2]:-}
    { [ -z "$a" ] || [ -z "$b" ]; } && echo "-" || awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f / %.1f", a, b }'
}
per_msg() { # bytes per pending message from two kB figures
    local a=${RESULT[$1]:-} b=${RESULT[$2]:-}
    { [ -z "$a" ] || [ -z "$b" ]; } && echo "-" ||
        awk -v a="$a" -v b="$b" -v n="$MESSAGES" 'BEGIN { printf "%.0f B", (b - a) * 1024 / n }'
}

only_restart() { [ "$1" = restart ] && "${@:2}" || echo -; }
le() { local v=${RESULT[$1]:-}; [ -z "$v" ] && echo "-" || echo "<= $v"; }
MEMORY="| run | published in | RSS idle | RSS pending | per message | data dir pending | stop | listening after | first CONNACK after | RSS after restart | RSS delivered | data dir delivered |
|---|---|---|---|---|---|---|---|---|---|---|---|"
LATENESS="| run | p50 ms | p99 ms | p99.9 ms | max ms | over 50 ms | arrived | broker's own p50 / p99 / p99.9 / max ms |
|---|---|---|---|---|---|---|---|"
for run in "${RUNS[@]}"; do
    restarted="-"
    [ "$run" = restart ] && restarted="$(mib "$run.rss_restarted") ($(mib "$run.rss_restarted_1s") 1 s later)"
    MEMORY+="
| $run | $(secs "$run.published_s") | $(mib "$run.rss_idle") | $(mib "$run.rss_pending") | $(per_msg "$run.rss_idle" "$run.rss_pending") | $(mib "$run.du_pending") | $(only_restart "$run" secs "$run.stop_s") | $(only_restart "$run" secs "$run.listen_s") | $(only_restart "$run" secs "$run.ready_s") | $restarted | $(mib "$run.rss_delivered") | $(mib "$run.du_delivered") |"
    LATENESS+="
| $run | $(bounds "$run" p50_ms) | $(bounds "$run" p99_ms) | $(bounds "$run" p999_ms) | $(bounds "$run" max_ms) | $(get "$run.over_50ms") / $(get "$run.send_over_50ms") | $(get "$run.arrived") of $(get "$run.expected") | $(le "$run.broker_p50_le_ms") / $(le "$run.broker_p99_le_ms") / $(le "$run.broker_p999_le_ms") / $(le "$run.broker_max_le_ms") |"
done
NOTES=""
for run in "${RUNS[@]}"; do
    NOTES+="
- $run: load average $(get "$run.load_before") before, $(get "$run.load_after") after; subscribed $(secs "$run.subscribed_before_first_due_s") before the first due time; lateness min $(bounds "$run" min_ms) ms; duplicates $(get "$run.duplicates"), unknown topics $(get "$run.strangers"); peak RSS (VmHWM) while publishing $(mib "$run.hwm_pending"); pending per the broker after publishing $(get "$run.pending")$([ "$run" = restart ] && echo ", after the restart $(get "$run.pending_restarted")"); $(get "$run.published") counted in the broker's lateness histogram"
done

REPORT="## Delayed publish at rest and across a restart ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED}s)

$MESSAGES delayed messages at QoS 1 (MQTT 5.0, 100 unacknowledged at a time), delays $START_DELAY-$(( START_DELAY + SPREAD )) s, received by one paho-mqtt subscriber; petrel \`serve --data-dir DIR --port P\` (embedded default, durability sync).

### Memory, disk and restart

$MEMORY

### Lateness

Each cell is after PUBACK / after send: arrival minus (PUBACK + delay), a lower bound of the lateness, and arrival minus (the PUBLISH's write + delay), an upper bound. The broker's own figures are its \`petrel_delayed_lateness_seconds\` histogram (due time to publication, before any socket write; buckets of powers of two ms, so each figure is the bound of its bucket).

$LATENESS

### Notes${NOTES}"
echo "$REPORT" | tee "$OUT/report.md"
log "report and broker logs in $OUT"
