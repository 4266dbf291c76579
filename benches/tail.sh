#!/usr/bin/env bash
# Tail latency of flow-controlled QoS 1 fan-in, petrel and Mosquitto side by
# side: 8 publishers, one subscriber, at most 1000 messages in flight end to
# end (`petrel bench --e2e-window 1000`), MQTT 5.0 and 3.1.1, each run
# REPEAT times per broker, alternating which goes first. Prints the median
# throughput, p50, p99 and p99/p50 per broker and protocol.
#
# Mosquitto runs with its inflight and queue limits lifted, because with
# 1000 messages in flight its defaults drop messages (which leaks the
# end-to-end window and makes its latency meaningless); petrel runs on its
# embedded default.
#
# Usage: benches/tail.sh [--no-build] [--repeat N] [--messages N]
#
# Environment: CARGO_TARGET_DIR is honoured; PETREL_BIN and BENCH_BIN
# override the broker and the load generator binaries (both default to the
# release build of petrel); TAIL_RAW=FILE keeps the raw JSON lines.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=1
REPEAT=3
MESSAGES=50000
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --repeat) REPEAT=$2; shift ;;
        --messages) MESSAGES=$2; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi

WORK=$(mktemp -d /tmp/petrel-tail.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

P_PORT=$(free_port)
M_PORT=$(free_port)
while [ "$M_PORT" = "$P_PORT" ]; do M_PORT=$(free_port); done
"$PETREL_BIN" serve -p "$P_PORT" --data-dir "$WORK/petrel-data" >"$WORK/petrel.log" 2>&1 &
PIDS+=($!)
wait_listening "$P_PORT" "$!" || { tail -5 "$WORK/petrel.log" >&2; echo "petrel did not start" >&2; exit 1; }
cat > "$WORK/m.conf" <<EOF
listener $M_PORT 127.0.0.1
allow_anonymous true
max_inflight_messages 0
max_queued_messages 0
persistence false
set_tcp_nodelay true
EOF
mosquitto -c "$WORK/m.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_listening "$M_PORT" "$!" || { echo "mosquitto did not start" >&2; exit 1; }

run() { # port protocol
    "$BENCH_BIN" bench --port "$1" --protocol "$2" --scenario fan-in --qos 1 \
        --publishers 8 --max-inflight 125 --e2e-window 1000 --messages "$MESSAGES" \
        --timeout 120 --json
}

for protocol in 5 4; do
    for i in $(seq 1 "$REPEAT"); do
        if [ $((i % 2)) = 1 ]; then order="petrel mosquitto"; else order="mosquitto petrel"; fi
        for broker in $order; do
            port=$P_PORT; [ "$broker" = mosquitto ] && port=$M_PORT
            echo "$broker $protocol $(run "$port" "$protocol")" >> "$WORK/runs"
            # Both brokers share two cores with the load generator: let the
            # one just measured settle before the other runs.
            sleep 2
        done
    done
done

[ -n "${TAIL_RAW:-}" ] && cp "$WORK/runs" "$TAIL_RAW"
python3 - "$WORK/runs" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    broker, protocol, raw = line.split(" ", 2)
    rows.setdefault((broker, protocol), []).append(json.loads(raw))
print("| broker | MQTT | delivered msg/s | p50 ms | p99 ms | p99 / p50 | lost |")
print("|---|---|---|---|---|---|---|")
for protocol in ["5", "4"]:
    for broker in ["petrel", "mosquitto"]:
        runs = rows[(broker, protocol)]
        med = lambda key: statistics.median(r[key] or 0 for r in runs)
        p50, p99 = med("p50_us") / 1000, med("p99_us") / 1000
        print(f"| {broker} | {'5.0' if protocol == '5' else '3.1.1'} | {med('delivered_rate'):.0f} | {p50:.2f} | {p99:.2f} | {p99 / p50:.2f} | {sum(r['lost'] for r in runs)} |")
EOF
