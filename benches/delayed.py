#!/usr/bin/env python3
"""How late delayed publishes fire (DESIGN §11: p99 within 50 ms of the due
time with 100k pending), in one run or across a broker restart.

Publishes N messages to `$delayed/{seconds}/bench-delay/{i}` at QoS 1 (MQTT
5.0 over a plain socket, 100 unacknowledged at a time), with delays that
start after publishing is done (so that all N are pending at once) and
spread over --spread seconds (so that the one paho-mqtt subscriber on
`bench-delay/#` keeps up as they fall due). The broker fixes a message's due
time somewhere between the moment its PUBLISH started to go out and the
moment its PUBACK came back, so lateness is given twice:

  after PUBACK  arrival - (PUBACK + delay): a lower bound, what the
                broker promises at the latest
  after send    arrival - (write of the PUBLISH + delay): an upper bound

Their difference is at most the PUBACK's latency (a group commit under
`sync`). Mosquitto has no delayed publish, so nothing runs beside it.

Modes (benches/delayed.sh runs the last three around a restart):

  delayed.py PORT                       publish, then receive, in one run
  delayed.py PORT --publish-only FILE   publish, write every due time to FILE
  delayed.py PORT --receive FILE        subscribe, measure against FILE
  delayed.py PORT --await-broker        print the wall time of the first
                                        CONNACK (after a restart, a broker
                                        may listen before it serves)

Usage: python3 benches/delayed.py PORT [--messages N] [--spread SECONDS]
           [--start SECONDS] [--publish-only FILE | --receive FILE |
           --await-broker] [--json]
"""

import argparse
import json
import queue
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TOPIC_ROOT = "bench-delay"
# Arrivals after the last due time are still waited for this long, so a
# broker that falls behind shows as late rather than lost.
GRACE_S = 30


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    at = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[at]


def default_start(messages):
    """Seconds before the first delay falls due: enough to publish
    everything by then (15-40k a second here)."""
    return max(2, messages // 15_000 + 2)


class Receiver:
    """One paho subscriber on `bench-delay/#` that queues each arrival's
    time."""

    def __init__(self, port, client_id):
        self.arrivals = queue.Queue()
        self.subscribed = threading.Event()
        self.subscribed_at = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{TOPIC_ROOT}/#", qos=0)
        if not self.subscribed.wait(10):
            sys.exit("no SUBACK within 10 s")

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        self.subscribed_at = time.time()
        self.subscribed.set()

    def _on_message(self, client, userdata, message):
        self.arrivals.put((time.time(), message.topic))

    def collect(self, earliest, latest, deadline):
        """Arrivals until every index came or the deadline: lateness in ms
        of each first arrival after its PUBACK and after its send, copies of
        an index already seen, and topics outside the published set."""
        after_ack = []
        after_send = []
        seen = set()
        duplicates = 0
        strangers = 0
        while len(seen) < len(latest) and time.time() < deadline:
            try:
                arrived, topic = self.arrivals.get(timeout=1)
            except queue.Empty:
                continue
            try:
                index = int(topic.rsplit("/", 1)[1])
            except ValueError:
                strangers += 1
                continue
            if index not in latest:
                strangers += 1
            elif index in seen:
                duplicates += 1
            else:
                seen.add(index)
                after_ack.append((arrived - latest[index]) * 1000)
                after_send.append((arrived - earliest[index]) * 1000)
        return after_ack, after_send, duplicates, strangers

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first, body):
    return bytes([first]) + _varint(len(body)) + body


def _utf8(text):
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


class Packets:
    """Splits the bytes a broker sends into (first byte, body) packets."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        packets = []
        while len(self.buf) >= 2:
            length, shift, at = 0, 0, 1
            while True:
                if at >= len(self.buf):
                    return packets
                byte = self.buf[at]
                length += (byte & 0x7F) << shift
                shift += 7
                at += 1
                if not byte & 0x80:
                    break
            if len(self.buf) < at + length:
                return packets
            packets.append((self.buf[0], bytes(self.buf[at:at + length])))
            del self.buf[:at + length]
        return packets


def publish(port, messages, spread, start):
    """Publishes every delayed message over a plain socket (MQTT 5.0, QoS 1,
    WINDOW unacknowledged) and returns, per index, the earliest and latest
    time the broker can have fixed its due time (the write of its PUBLISH
    began, its PUBACK arrived; delay added), and the seconds publishing
    took. One thread both writes and reads, so neither time waits for a
    Python thread to be scheduled, as paho's callbacks can under load."""
    window = 100
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # CONNECT: MQTT 5.0, clean start, keepalive 0 (no pings needed), no
    # properties, client id bench-delay-pub.
    sock.sendall(_packet(0x10, _utf8("MQTT") + bytes([5, 0x02, 0, 0, 0]) + _utf8("bench-delay-pub")))
    packets = Packets()
    reply = []
    while not reply:
        data = sock.recv(4096)
        if not data:
            sys.exit("the broker closed the publisher's connection before CONNACK")
        reply = packets.feed(data)
    first, body = reply[0]
    if first != 0x20 or len(body) < 2 or body[1] != 0:
        sys.exit(f"the broker refused the publisher: CONNACK {body.hex()}")

    started = time.time()
    inflight = {}
    earliest = {}
    latest = {}
    next_id = 0
    sent = 0
    while sent < messages or inflight:
        batch = bytearray()
        queued = []
        while sent < messages and len(inflight) + len(queued) < window:
            delay = start + sent % (spread + 1)
            next_id = next_id % 65535 + 1
            body = (_utf8(f"$delayed/{delay}/{TOPIC_ROOT}/{sent}") + next_id.to_bytes(2, "big")
                    + b"\x00" + str(delay).encode())
            batch += _packet(0x32, body)
            queued.append((next_id, sent, delay))
            sent += 1
        if batch:
            began = time.time()
            sock.sendall(batch)
            for packet_id, index, delay in queued:
                inflight[packet_id] = (index, delay, began)
        data = sock.recv(65536)
        answered = time.time()
        if not data:
            sys.exit("the broker closed the publisher's connection")
        for first, body in packets.feed(data):
            if first >> 4 != 4:
                continue
            packet_id = int.from_bytes(body[:2], "big")
            reason = body[2] if len(body) > 2 else 0
            if packet_id not in inflight:
                sys.exit(f"PUBACK for packet id {packet_id}, which is not in flight")
            index, delay, began = inflight.pop(packet_id)
            if reason >= 0x80:
                sys.exit(f"message {index} refused with reason {reason:#04x}")
            earliest[index] = began + delay
            latest[index] = answered + delay
    published = time.time() - started
    sock.sendall(_packet(0xE0, b""))
    sock.close()
    return earliest, latest, published


def summary(after_ack, after_send, duplicates, strangers, expected):
    after_ack.sort()
    after_send.sort()
    result = {
        "expected": expected,
        "arrived": len(after_ack),
        "duplicates": duplicates,
        "strangers": strangers,
    }
    for name, values in (("", after_ack), ("send_", after_send)):
        result.update({
            f"{name}p50_ms": percentile(values, 50),
            f"{name}p99_ms": percentile(values, 99),
            f"{name}p999_ms": percentile(values, 99.9),
            f"{name}max_ms": values[-1] if values else float("nan"),
            f"{name}min_ms": values[0] if values else float("nan"),
            f"{name}over_50ms": sum(1 for v in values if v > 50),
        })
    return result


def print_lateness(result):
    print(f"{result['arrived']} of {result['expected']} arrived "
          f"({result['duplicates']} duplicates, {result['strangers']} unknown topics)")
    for name, prefix in (("after PUBACK", ""), ("after send", "send_")):
        print(f"lateness ms {name:>12}: p50 {result[prefix + 'p50_ms']:.1f}  "
              f"p99 {result[prefix + 'p99_ms']:.1f}  p99.9 {result[prefix + 'p999_ms']:.1f}  "
              f"max {result[prefix + 'max_ms']:.1f}  min {result[prefix + 'min_ms']:.1f}  "
              f"over 50 ms {result[prefix + 'over_50ms']}")


def single_run(args):
    start = args.start if args.start is not None else default_start(args.messages)
    receiver = Receiver(args.port, "bench-delay-sub")
    earliest, latest, published = publish(args.port, args.messages, args.spread, start)
    after_ack, after_send, duplicates, strangers = receiver.collect(
        earliest, latest, max(latest.values()) + GRACE_S)
    receiver.stop()
    result = summary(after_ack, after_send, duplicates, strangers, args.messages)
    result["published_s"] = published
    if args.json:
        print(json.dumps(result))
    else:
        print(f"published {args.messages} delayed messages in {published:.1f} s "
              f"(delays {start}-{start + args.spread} s)")
        print_lateness(result)
    return result


def publish_only(args):
    start = args.start if args.start is not None else default_start(args.messages)
    earliest, latest, published = publish(args.port, args.messages, args.spread, start)
    record = {
        "messages": args.messages,
        "published_s": published,
        "first_due": min(earliest.values()),
        "last_due": max(latest.values()),
        "earliest": [earliest[i] for i in range(args.messages)],
        "latest": [latest[i] for i in range(args.messages)],
    }
    with open(args.publish_only, "w", encoding="utf-8") as out:
        json.dump(record, out)
    brief = {k: v for k, v in record.items() if k not in ("earliest", "latest")}
    if args.json:
        print(json.dumps(brief))
    else:
        ahead = record["first_due"] - time.time()
        print(f"published {args.messages} delayed messages in {published:.1f} s "
              f"(delays {start}-{start + args.spread} s); the first falls due in {ahead:.1f} s")


def receive(args):
    with open(args.receive, encoding="utf-8") as source:
        record = json.load(source)
    earliest = dict(enumerate(record["earliest"]))
    latest = dict(enumerate(record["latest"]))
    receiver = Receiver(args.port, "bench-delay-sub")
    # Messages that fell due before this SUBACK went to nobody: the run
    # would count them as lost, not late.
    margin = record["first_due"] - receiver.subscribed_at
    after_ack, after_send, duplicates, strangers = receiver.collect(
        earliest, latest, record["last_due"] + GRACE_S)
    receiver.stop()
    result = summary(after_ack, after_send, duplicates, strangers, len(latest))
    result["subscribed_before_first_due_s"] = margin
    if args.json:
        print(json.dumps(result))
    else:
        print(f"subscribed {margin:.1f} s before the first due time")
        print_lateness(result)
    if margin < 0:
        print(f"warning: subscribed {-margin:.1f} s after the first due time", file=sys.stderr)


def await_broker(args):
    """Sends a bare MQTT 3.1.1 CONNECT until a CONNACK comes back; paho is
    not needed, so this starts as fast as Python does."""
    connect = _packet(0x10, _utf8("MQTT") + bytes([4, 0x02, 0, 10]) + _utf8(""))
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout) as s:
                s.sendall(connect)
                reply = s.recv(4)
                if len(reply) >= 4 and reply[0] == 0x20 and reply[3] == 0:
                    answered = time.time()
                    s.sendall(_packet(0xE0, b""))
                    print(f"{answered:.6f}")
                    return
        except OSError:
            pass
        time.sleep(0.005)
    sys.exit(f"no CONNACK from port {args.port} within {args.timeout} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--spread", type=int, default=60,
                        help="delays range over this many seconds past the shortest")
    parser.add_argument("--start", type=int,
                        help="shortest delay in seconds (default: long enough to publish everything first)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--publish-only", metavar="FILE",
                      help="publish, then write each message's due time to FILE")
    mode.add_argument("--receive", metavar="FILE",
                      help="subscribe and measure lateness against the due times in FILE")
    mode.add_argument("--await-broker", action="store_true",
                      help="print the wall time at which the broker first answers CONNECT")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds --await-broker keeps trying")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    if args.await_broker:
        await_broker(args)
    elif args.publish_only:
        publish_only(args)
    elif args.receive:
        receive(args)
    else:
        result = single_run(args)
        if result["arrived"] < args.messages:
            sys.exit(f"{args.messages - result['arrived']} never arrived")


if __name__ == "__main__":
    main()
