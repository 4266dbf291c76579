#!/usr/bin/env python3
"""How late delayed publishes fire (DESIGN §11: p99 within 50 ms of the due
time with 100k pending).

Publishes N messages to `$delayed/{seconds}/bench-delay/{i}` at QoS 1 from
one paho-mqtt client, with delays that start after publishing is done (so
that all N are pending at once) and spread over --spread seconds (so that
the one Python subscriber on `bench-delay/#` keeps up as they fall due).
Lateness is arrival - (PUBACK + delay): the broker took the delay's time
before it sent the PUBACK, so this understates its lateness by at most the
PUBACK's own latency (a group commit under `sync`). Mosquitto has no
delayed publish, so there is nothing to run beside it.

Usage: python3 benches/delayed.py PORT [--messages N] [--spread SECONDS]
"""

import argparse
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    at = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[at]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--spread", type=int, default=60,
                        help="delays range over this many seconds past the publishing time")
    args = parser.parse_args()

    arrivals = queue.Queue()
    subscribed = threading.Event()

    def on_subscribe(client, userdata, mid, reasons, properties):
        subscribed.set()

    def on_message(client, userdata, message):
        arrivals.put((time.time(), message.topic))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-delay-sub",
                      protocol=mqtt.MQTTv5)
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect("127.0.0.1", args.port)
    sub.loop_start()
    sub.subscribe("bench-delay/#", qos=0)
    if not subscribed.wait(10):
        sys.exit("no SUBACK within 10 s")

    acked = {}

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[mid] = time.time()

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-delay-pub",
                      protocol=mqtt.MQTTv5)
    pub.on_publish = on_publish
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", args.port)
    pub.loop_start()

    # Long enough to publish everything first (about 20k/s from paho).
    base = max(2, args.messages // 15_000 + 2)
    started = time.time()
    infos = []
    due = {}
    for i in range(args.messages):
        delay = base + i % (args.spread + 1)
        info = pub.publish(f"$delayed/{delay}/bench-delay/{i}", str(delay).encode(), qos=1)
        infos.append((i, delay, info))
        # paho's packet ids wrap at 65535: keep fewer than that unacknowledged.
        if len(infos) >= 10_000 or i == args.messages - 1:
            for index, wait, sent in infos:
                sent.wait_for_publish(60)
                due[index] = acked.pop(sent.mid) + wait
            infos.clear()
    published = time.time() - started

    lateness = []
    deadline = time.time() + base + args.spread + 30
    while len(lateness) < args.messages and time.time() < deadline:
        try:
            arrived, topic = arrivals.get(timeout=1)
        except queue.Empty:
            continue
        index = int(topic.rsplit("/", 1)[1])
        lateness.append((arrived - due[index]) * 1000)
    pub.loop_stop()
    sub.loop_stop()

    lateness.sort()
    print(f"published {args.messages} delayed messages in {published:.1f} s "
          f"(delays {base}-{base + args.spread} s); {len(lateness)} arrived")
    print(f"lateness ms: p50 {percentile(lateness, 50):.1f}  p99 {percentile(lateness, 99):.1f}  "
          f"p99.9 {percentile(lateness, 99.9):.1f}  max {lateness[-1] if lateness else float('nan'):.1f}  "
          f"min {lateness[0] if lateness else float('nan'):.1f}")
    if len(lateness) < args.messages:
        sys.exit(f"{args.messages - len(lateness)} never arrived")


if __name__ == "__main__":
    main()
