#!/usr/bin/env bash
# A retry storm: one consumer group refuses every message of a busy stream
# while a second group on the same stream acknowledges everything. Does the
# partition throughput stay sane, does the broker's CPU, and does the
# healthy group notice?
#
# Every run starts its own petrel (durability "sync", a fresh data
# directory, free 127.0.0.1 ports) with one stream `bench`: filter bench/#,
# key topic:1, --partitions partitions, start latest,
# max_inflight_per_partition --inflight, retry_backoff [--backoff],
# max_attempts --max-attempts, and the run's ordering. Then
# `petrel bench --scenario stream --protocol 5` publishes --rate msg/s at
# QoS 1 from 8 publishers over 1000 keys for about --seconds seconds, read
# by the healthy group `bench` of 4 members, and:
#
#   baseline        nothing else (ordering strict; without failures the
#                   ordering changes nothing)
#   storm-strict    also group `nack` of 4 members refusing every delivery
#                   (v5 PUBACK reason 0x80), ordering strict: a partition
#                   waits for each retry
#   storm-relaxed   the same with ordering relaxed: a partition moves on and
#                   the failed message waits in the group's retry queue
#
# The refusing group's members count deliveries and retries (user property
# `attempt` > 1); a watcher on $dlq/nack/bench counts dead letters. The
# refusing group is stopped when the healthy group has everything (and the
# load generator's 2 s of quiet after it). The load generator reads the
# broker's CPU time (utime + stime from /proc/PID/stat) at the publishers'
# start and at their last acknowledgement; RSS comes from
# /proc/PID/status. The admin API (/v1/streams/bench) is polled every
# second for each group's lag (offsets appended and not committed, summed
# over partitions); /metrics gives the journal's fdatasync count and
# records per fsync, /proc/PID/stat the system share of the CPU time (both
# over the whole load generator run); the data directory's size and the
# broker's log are read after it stops.
#
# Usage: benches/retry_storm.sh [--quick] [--no-build] [--repeat N]
#                               [--rate R] [--seconds S] [--partitions P]
#                               [--inflight N] [--backoff D]
#                               [--max-attempts N] [--refuse-every N]
#                               [--out DIR]
#
#   --quick           10 s runs, one repetition
#   --repeat N        repetitions of every run (default 3, quick 1), the
#                     first run rotating; the table shows medians
#   --rate R          offered load in msg/s over all publishers (default 3000)
#   --seconds S       seconds of publishing per run (default 25)
#   --partitions P    the stream's partitions (default 8)
#   --inflight N      max_inflight_per_partition (default 1, the default)
#   --backoff D       the one retry_backoff step (default 100ms)
#   --max-attempts N  max_attempts (default 3)
#   --refuse-every N  the refusing group refuses each key's messages
#                     numbered 0, N, 2N, ... (default 1: all of them)
#   --no-build        use the existing release binary
#   --out DIR         where the raw JSON lines, admin samples, broker logs
#                     and the report go (default target/bench/retry-storm-<time>)
#
# A full run takes about 5 minutes. Environment: CARGO_TARGET_DIR,
# PETREL_BIN and BENCH_BIN as in benches/common.sh; PYTHON (default
# python3) summarises.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
BUILD=1
REPEAT=""
RATE=3000
SECONDS_RUN=""
PARTITIONS=8
INFLIGHT=1
BACKOFF=100ms
MAX_ATTEMPTS=3
REFUSE_EVERY=1
OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --repeat) REPEAT=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --seconds) SECONDS_RUN=$2; shift ;;
        --partitions) PARTITIONS=$2; shift ;;
        --inflight) INFLIGHT=$2; shift ;;
        --backoff) BACKOFF=$2; shift ;;
        --max-attempts) MAX_ATTEMPTS=$2; shift ;;
        --refuse-every) REFUSE_EVERY=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,60p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$TARGET_DIR/bench/retry-storm-$(date +%Y%m%d-%H%M%S)}
if [ "$QUICK" = 1 ]; then
    SECONDS_RUN=${SECONDS_RUN:-10}; REPEAT=${REPEAT:-1}
else
    SECONDS_RUN=${SECONDS_RUN:-25}; REPEAT=${REPEAT:-3}
fi
for v in "$REPEAT" "$RATE" "$SECONDS_RUN" "$PARTITIONS" "$INFLIGHT" "$MAX_ATTEMPTS" "$REFUSE_EVERY"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "$v: give a whole number of at least 1" >&2; exit 2; }
done
[[ "$BACKOFF" =~ ^[0-9]+(ms|s|m)$ ]] || { echo "--backoff $BACKOFF: give e.g. 100ms or 1s" >&2; exit 2; }
PUBLISHERS=8
KEYS=1000
MEMBERS=4
STREAM=bench
MESSAGES=$(( RATE * SECONDS_RUN / PUBLISHERS ))
[ "$MESSAGES" -ge 1 ] || { echo "--rate $RATE x --seconds $SECONDS_RUN is under one message per publisher" >&2; exit 2; }
RUN_TIMEOUT=$(( SECONDS_RUN * 4 + 60 ))
RUNS=(baseline storm-strict storm-relaxed)

WORK=$(mktemp -d /tmp/petrel-storm.XXXXXX)
BROKER_PID=""
POLLER_PID=""
stop_pid() { # pid: SIGTERM and wait, if it still runs
    if [ -n "$1" ]; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop_pid "$POLLER_PID"
    stop_pid "$BROKER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[retry-storm] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$PETREL_BIN" ] || { echo "petrel not found: $PETREL_BIN" >&2; exit 1; }
[ -x "$BENCH_BIN" ] || { echo "load generator not found: $BENCH_BIN" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

ordering_of() { case "$1" in storm-relaxed) echo relaxed ;; *) echo strict ;; esac; }

# run_once RUN REP: one broker, one load generator run; appends one JSON
# line (the load generator's, plus what this script measured) to RESULTS.
run_once() {
    local run=$1 rep=$2 port admin data conf tag=$1-$2 load out
    port=$(free_port)
    admin=$(free_port)
    while [ "$admin" = "$port" ]; do admin=$(free_port); done
    data=$WORK/$tag-data
    conf=$WORK/$tag.toml
    mkdir -p "$data"
    cat > "$conf" <<EOF
data_dir = "$data"
durability = "sync"

[[listeners]]
bind = "127.0.0.1:$port"

[admin]
bind = "127.0.0.1:$admin"

[[streams]]
name = "$STREAM"
filters = ["$STREAM/#"]
partitions = $PARTITIONS
key = "topic:1"
start = "latest"
max_inflight_per_partition = $INFLIGHT
retry_backoff = ["$BACKOFF"]
max_attempts = $MAX_ATTEMPTS
ordering = "$(ordering_of "$run")"
EOF
    "$PETREL_BIN" serve -c "$conf" >"$OUT/$tag.log" 2>&1 &
    BROKER_PID=$!
    if ! wait_listening "$port" "$BROKER_PID" || ! wait_listening "$admin" "$BROKER_PID"; then
        tail -20 "$OUT/$tag.log" >&2
        echo "petrel did not start" >&2
        exit 1
    fi
    # One sample a second of every group's lag, for as long as the run lasts.
    (
        while true; do
            sample=$(curl -sf "http://127.0.0.1:$admin/v1/streams/$STREAM" || true)
            [ -n "$sample" ] && echo "$(date +%s.%N) $sample"
            sleep 1
        done
    ) > "$OUT/$tag.admin" &
    POLLER_PID=$!
    load=$(awk '{ print $1, $2, $3 }' /proc/loadavg)
    local what=()
    [ "$run" != baseline ] && what=(--refusing-group nack --refuse-every "$REFUSE_EVERY")
    log "run $rep/$REPEAT: $run (ordering $(ordering_of "$run"), load average $load)"
    local t0 t1 ticks0 ticks1 journal
    t0=$(date +%s.%N)
    ticks0=$(awk '{ print $14, $15 }' "/proc/$BROKER_PID/stat")
    if ! out=$("$BENCH_BIN" bench --host 127.0.0.1 --port "$port" --broker-pid "$BROKER_PID" \
            --label "$run" --scenario stream --protocol 5 --qos 1 --stream "$STREAM" \
            --group bench --members "$MEMBERS" --publishers "$PUBLISHERS" --keys "$KEYS" \
            --messages "$MESSAGES" --rate "$RATE" --timeout "$RUN_TIMEOUT" --json \
            "${what[@]}" 2>"$WORK/bench.err"); then
        out="{\"label\":\"$run\",\"bench_error\":$("$PYTHON" -c 'import json, sys; print(json.dumps(sys.stdin.read()))' < "$WORK/bench.err")}"
    fi
    t1=$(date +%s.%N)
    ticks1=$(awk '{ print $14, $15 }' "/proc/$BROKER_PID/stat" 2>/dev/null || echo "")
    # Under sync every fdatasync is a group commit: how many there were,
    # and how many records each carried, explain most of the CPU time.
    journal=$(curl -sf "http://127.0.0.1:$admin/metrics" |
        awk '/^petrel_journal_(flush_seconds|batch_records)_(count|sum) / { printf "%s=%s ", $1, $2 }' || true)
    # The last sample, taken after the members left, shows where each
    # group stands once the storm is over.
    sleep 1.5
    stop_pid "$POLLER_PID"; POLLER_PID=""
    local rss log_bytes data_kb
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$BROKER_PID/status" 2>/dev/null || echo "")
    stop_pid "$BROKER_PID"; BROKER_PID=""
    log_bytes=$(stat -c %s "$OUT/$tag.log")
    data_kb=$(du -sk "$data" | awk '{ print $1 }')
    rm -rf "$data"
    "$PYTHON" - "$out" "$OUT/$tag.admin" "$rep" "$load" "${rss:-}" "$log_bytes" "$data_kb" \
        "$t0" "$t1" "$ticks0" "${ticks1:-}" "$journal" >> "$RESULTS" <<'PY'
import json, sys
line, samples, rep, load, rss, log_bytes, data_kb, t0, t1, ticks0, ticks1, journal = sys.argv[1:]
r = json.loads(line)
r.update(rep=int(rep), load=load, rss_after_kb=int(rss) if rss else None,
         broker_log_bytes=int(log_bytes), data_dir_kb=int(data_kb))
# Over the whole load generator run (connecting and the final quiet
# included), so only as context for the measured CPU figure.
wall = float(t1) - float(t0)
if ticks1:
    (u0, s0), (u1, s1) = (map(int, t.split()) for t in (ticks0, ticks1))
    used = (u1 - u0) + (s1 - s0)
    r["whole_run_cpu_pct"] = used / 100 / wall * 100
    r["system_share_pct"] = (s1 - s0) / used * 100 if used else None
stats = dict(kv.split("=") for kv in journal.split())
flushes = float(stats.get("petrel_journal_flush_seconds_count", 0))
if flushes:
    r["fsyncs_per_s"] = flushes / wall
    r["records_per_fsync"] = float(stats["petrel_journal_batch_records_sum"]) / flushes
    r["fsync_busy_pct"] = float(stats["petrel_journal_flush_seconds_sum"]) / wall * 100
lag = {}
last = {}
for row in open(samples, encoding="utf-8"):
    _, _, body = row.partition(" ")
    try:
        stream = json.loads(body)
    except ValueError:
        continue
    for g in stream["groups"]:
        total = sum(p["lag"] for p in g["partitions"])
        retrying = sum(p["retrying"] for p in g["partitions"])
        lag.setdefault(g["name"], []).append(total)
        last[g["name"]] = dict(lag=total, retrying=retrying, dead_letters=g["dead_letters"])
for name, values in lag.items():
    r[f"lag_max_{name}"] = max(values)
    r[f"lag_end_{name}"] = last[name]["lag"]
    r[f"retrying_end_{name}"] = last[name]["retrying"]
    r[f"dead_letters_broker_{name}"] = last[name]["dead_letters"]
print(json.dumps(r))
PY
}

START=$(date +%s)
n=${#RUNS[@]}
for rep in $(seq 1 "$REPEAT"); do
    for i in $(seq 0 $(( n - 1 ))); do
        run_once "${RUNS[$(( (rep - 1 + i) % n ))]}" "$rep"
    done
done
ELAPSED=$(( $(date +%s) - START ))

"$PYTHON" - "$RESULTS" "$REPEAT" "$ELAPSED" "$RATE" "$SECONDS_RUN" "$PARTITIONS" "$INFLIGHT" \
    "$BACKOFF" "$MAX_ATTEMPTS" "$REFUSE_EVERY" "$(nproc)" <<'PY' | tee "$OUT/report.md"
import json, statistics, sys, time
(path, repeat, elapsed, rate, seconds, partitions, inflight, backoff, attempts,
 every, cpus) = sys.argv[1:]
runs = {}
for line in open(path, encoding="utf-8"):
    r = json.loads(line)
    runs.setdefault(r["label"], []).append(r)

def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None

def tot(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) if values else None

def num(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v).replace(",", " ")

def ms(v):
    return "-" if v is None else f"{v / 1000:.1f}"

order = ["baseline", "storm-strict", "storm-relaxed"]
print(f"## Retry storm ({cpus} CPUs, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {elapsed}s)")
print()
print(f"Stream `bench`: {partitions} partitions, key topic:1, max_inflight_per_partition {inflight}, "
      f"retry_backoff [\"{backoff}\"], max_attempts {attempts}; durability sync. Load: 8 publishers, "
      f"{rate} msg/s at QoS 1 over 1000 keys for {seconds} s, MQTT 5.0. Healthy group `bench` of 4 "
      f"members; in the storm runs group `nack` of 4 members refuses "
      + ("every delivery" if every == "1" else f"each key's messages numbered 0, {every}, 2x{every}, ...")
      + f". Medians of {repeat} run(s); lost and errors are totals. Each group's rates are over its "
      "own first to last delivery and the dead letters over the refusing group's; the refusing group is stopped "
      "once the healthy group has everything. Broker CPU is utime + stime while the publishers ran, "
      "in % of one core; the system share (of utime + stime), fsyncs/s (the journal's fdatasync count, "
      "`petrel_journal_flush_seconds_count`) and records per fsync are over the whole load generator "
      "run, setup and final quiet included. Healthy max lag is the largest sum over partitions of the "
      "admin API's lag, sampled every second.")
print()
print("| run | ordering | published msg/s | healthy consumed msg/s | healthy p50 ms | healthy p99 ms "
      "| healthy p99.9 ms | healthy max lag | lost | refusing deliveries/s | retries/s | dead letters/s "
      "| refusing lag at end | broker CPU % | system share % | fsyncs/s | records per fsync "
      "| RSS at end MiB | data dir MiB | broker log MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in order:
    rows = [r for r in runs.get(name, []) if "bench_error" not in r]
    if not rows:
        print(f"| {name} | (no result) |" + " - |" * 18)
        continue
    ordering = "relaxed" if name == "storm-relaxed" else "strict"
    storm = name != "baseline"
    rss = med(rows, "rss_end_kb")
    print("| " + " | ".join([
        name, ordering,
        num(med(rows, "ack_rate")),
        num(med(rows, "delivered_rate")),
        ms(med(rows, "p50_us")), ms(med(rows, "p99_us")), ms(med(rows, "p999_us")),
        num(med(rows, "lag_max_bench")),
        num(tot(rows, "lost")),
        num(med(rows, "refusing_delivery_rate")) if storm else "-",
        num(med(rows, "refusing_retry_rate")) if storm else "-",
        num(med(rows, "dead_letter_rate")) if storm else "-",
        num(med(rows, "lag_end_nack")) if storm else "-",
        num(med(rows, "broker_cpu_pct")),
        num(med(rows, "system_share_pct")),
        num(med(rows, "fsyncs_per_s")),
        num(med(rows, "records_per_fsync"), "{:.1f}"),
        num(None if rss is None else rss / 1024, "{:.1f}"),
        num(med(rows, "data_dir_kb") / 1024, "{:.1f}"),
        num(med(rows, "broker_log_bytes") / 2**20, "{:.1f}"),
    ]) + " |")
print()
print("### Every run")
print()
print("| run | rep | load average | elapsed s | healthy msg/s | p99 ms | refusing active s | refusing deliveries | retries "
      "| refused | dead letters (watcher / broker) | highest attempt / attempts | not refused / other reason "
      "| refusing retrying at end | CPU % | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in order:
    for r in sorted(runs.get(name, []), key=lambda r: r["rep"]):
        if "bench_error" in r:
            print(f"| {name} | {r['rep']} | {r['load']} | bench failed: {' '.join(r['bench_error'].split())[:200]} |")
            continue
        storm = "refusing_deliveries" in r
        cell = lambda key: num(r.get(key)) if storm else "-"
        errors = (r.get("errors") or 0) + (r.get("refusing_errors") or 0)
        first = r.get("first_error") or r.get("refusing_first_error")
        print("| " + " | ".join([
            name, str(r["rep"]), r["load"], f"{r['elapsed_s']:.1f}",
            num(r.get("delivered_rate")), ms(r.get("p99_us")),
            num(r.get("refusing_span_s"), "{:.1f}") if storm else "-",
            cell("refusing_deliveries"), cell("refusing_retries"), cell("refusing_refused"),
            f"{num(r.get('dead_letters'))} / {num(r.get('dead_letters_broker_nack'))}" if storm else "-",
            f"{r.get('refusing_max_attempt')} / {r.get('dead_letter_max_attempts')}" if storm else "-",
            f"{r.get('dead_letters_not_refused')} / {r.get('dead_letters_other_reason')}" if storm else "-",
            cell("retrying_end_nack"),
            num(r.get("broker_cpu_pct")),
            f"{errors}" + (f" ({first})" if first else ""),
        ]) + " |")
PY
log "raw results in $RESULTS, report in $OUT/report.md"
