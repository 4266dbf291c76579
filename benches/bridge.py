#!/usr/bin/env python3
"""Publishers, a counting subscriber and the arithmetic of benches/bridge.sh:
how fast a bridge forwards QoS 1 messages from a local broker to a remote
Mosquitto, and how fast it catches up on a backlog after an outage.

Every client here speaks MQTT 3.1.1 over a plain socket (no paho: a Python
MQTT client is the slowest part of such a benchmark, and a few hundred lines
of framing keep it out of the way). Messages go to `bench/{run}/{publisher}`
at QoS 1 with a fixed-size payload that starts with the message's sequence
number (12 decimal digits, then padding), so the subscriber can tell lost,
duplicated and reordered messages apart.

Modes:

  bridge.py publish PORT --run TAG --messages N [--publishers K]
            [--inflight W] [--payload B] [--rate R] [--started FILE]
      K connections (clean session) to the local broker, each publishing its
      share of the sequence numbers 0..N-1 in order, at most W unacknowledged
      at a time, unpaced or at R msg/s over all of them. Writes the wall time
      of its first PUBLISH to --started (so the caller can time an outage
      against it) and prints one JSON object: first send, last PUBACK,
      messages acknowledged, errors.

  bridge.py subscribe PORT --client-id ID --out FILE --expect N
            [--persistent] [--ready FILE] [--arm FILE] [--idle S]
            [--timeout S]
      One subscriber on `bench/#` at QoS 1 (clean session, or clean session
      0 with --persistent, reconnecting every 0.1 s whenever the connection
      is lost, so that a restarted remote finds it again). Writes --ready
      after its first SUBACK; records every PUBLISH (sequence number,
      arrival time, DUP flag) to --out; stops when N distinct sequence
      numbers arrived, or, once the file --arm exists, after --idle seconds
      without a message, or after --timeout seconds. Prints one JSON object
      with the connections it made.

  bridge.py analyze --publish P.json --arrivals FILE --messages N
            [--restart T] [--kill T] [--subscriber JSON]
      The figures of one phase: publish-side rate (first send to last
      PUBACK), forward rate (first to last arrival), lost and duplicated
      messages, arrivals out of order; with --restart (the wall time the
      remote listened again), the catch-up figures: backlog (messages first
      arriving after T), delay until the first of them, their rate, and the
      time until the last; with --subscriber, when the subscriber was back.

  bridge.py probe LOCAL REMOTE [--timeout S]
      Publishes to the local broker's `bench/probe` every 0.5 s until one
      arrives at a subscriber on the remote: the bridge is up end to end.

Usage: python3 benches/bridge.py MODE ...  (see --help of each mode)
"""

import argparse
import json
import os
import select
import signal
import socket
import sys
import time

SEQ_DIGITS = 12
KEEPALIVE = 600  # seconds; nothing here stays silent that long


def _varlen(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _packet(first, body):
    return bytes([first]) + _varlen(len(body)) + body


def _utf8(text):
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id, clean):
    flags = 0x02 if clean else 0x00
    return _packet(0x10, _utf8("MQTT") + bytes([4, flags]) + KEEPALIVE.to_bytes(2, "big")
                   + _utf8(client_id))


class Packets:
    """Splits a byte stream into (first byte, body) MQTT packets."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        buf = self.buf
        out = []
        at = 0
        end = len(buf)
        while end - at >= 2:
            length = 0
            mult = 1
            i = at + 1
            complete = False
            while i < end and i < at + 5:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                mult *= 128
                if not byte & 0x80:
                    complete = True
                    break
            if not complete or i + length > end:
                break
            out.append((buf[at], bytes(buf[i:i + length])))
            at = i + length
        if at:
            del buf[:at]
        return out


def open_session(port, client_id, clean, timeout=10):
    """Connects and returns (socket, session present, the stream's Packets,
    packets that came right behind CONNACK) once CONNACK says yes. A broker
    resuming a session may send its queued messages in the same read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, clean))
    packets = Packets()
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed before CONNACK")
        got = packets.feed(data)
        if got:
            first, body = got[0]
            if first != 0x20 or len(body) < 2:
                raise ConnectionError(f"expected CONNACK, got {first:#04x}")
            if body[1] != 0:
                raise ConnectionError(f"CONNACK refused with return code {body[1]}")
            return sock, bool(body[0] & 1), packets, got[1:]


def write_marker(path, when):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(f"{when:.6f}\n")
        os.replace(tmp, path)


# -- publish ---------------------------------------------------------------

class Publisher:
    def __init__(self, port, run, index, first_seq, count, payload, window):
        self.sock, _, self.packets, _ = open_session(port, f"bench-bridge-pub-{run}-{index}",
                                                     clean=True)
        self.sock.settimeout(None)
        self.topic = _utf8(f"bench/{run}/{index}")
        self.next_seq = first_seq
        self.end_seq = first_seq + count
        self.count = count
        self.pad = b"x" * (payload - SEQ_DIGITS)
        self.window = window
        self.inflight = {}  # packet id -> sequence number
        self.next_id = 0
        self.acked = 0
        self.refused = 0
        self.last_ack = None
        self.closed = None

    def done(self):
        return self.closed is not None or (self.next_seq >= self.end_seq and not self.inflight)

    def send(self, allowed):
        """Sends up to `allowed` messages within the window; returns how many."""
        room = min(allowed, self.window - len(self.inflight), self.end_seq - self.next_seq)
        if room <= 0 or self.closed is not None:
            return 0
        batch = bytearray()
        topic, pad = self.topic, self.pad
        for _ in range(room):
            self.next_id = self.next_id % 65535 + 1
            seq = self.next_seq
            self.next_seq += 1
            body = topic + self.next_id.to_bytes(2, "big") + b"%012d" % seq + pad
            batch += b"\x32" + _varlen(len(body)) + body
            self.inflight[self.next_id] = seq
        try:
            self.sock.sendall(batch)
        except OSError as e:
            self.closed = f"send: {e}"
        return room

    def receive(self):
        try:
            data = self.sock.recv(65536)
        except OSError as e:
            self.closed = f"recv: {e}"
            return
        now = time.time()
        if not data:
            self.closed = "the broker closed the connection"
            return
        for first, body in self.packets.feed(data):
            if first >> 4 != 4:
                continue
            packet_id = int.from_bytes(body[:2], "big")
            if self.inflight.pop(packet_id, None) is None:
                self.closed = f"PUBACK for packet id {packet_id}, which is not in flight"
                return
            self.acked += 1
            self.last_ack = now


def publish(args):
    per = [args.messages // args.publishers] * args.publishers
    for i in range(args.messages % args.publishers):
        per[i] += 1
    pubs = []
    first = 0
    for i, count in enumerate(per):
        pubs.append(Publisher(args.port, args.run, i, first, count, args.payload, args.inflight))
        first += count
    by_fd = {p.sock.fileno(): p for p in pubs}
    started = time.time()
    write_marker(args.started, started)
    sent = 0
    while not all(p.done() for p in pubs):
        if args.rate:
            allowed = int((time.time() - started) * args.rate) + 1 - sent
        else:
            allowed = 1 << 30
        for p in pubs:
            if allowed <= 0:
                break
            n = p.send(min(allowed, args.inflight))
            sent += n
            allowed -= n
        live = [p.sock for p in pubs if not p.done()]
        if not live:
            break
        wait = 0.05
        if args.rate:
            wait = max(0.0, min(wait, (sent + 1) / args.rate - (time.time() - started)))
        readable, _, _ = select.select(live, [], [], wait)
        for s in readable:
            by_fd[s.fileno()].receive()
    acks = [p.last_ack for p in pubs if p.last_ack]
    result = {
        "messages": args.messages,
        "publishers": args.publishers,
        "first_send": started,
        "last_ack": max(acks) if acks else None,
        "acked": sum(p.acked for p in pubs),
        "unacked": sum(len(p.inflight) for p in pubs),
        "errors": [f"publisher {i}: {p.closed}" for i, p in enumerate(pubs) if p.closed],
    }
    for p in pubs:
        try:
            p.sock.sendall(b"\xe0\x00")
            p.sock.close()
        except OSError:
            pass
    if result["last_ack"]:
        result["publish_s"] = result["last_ack"] - started
        result["publish_rate"] = result["acked"] / result["publish_s"] if result["publish_s"] > 0 else None
    print(json.dumps(result))
    if result["errors"]:
        sys.exit(1)


# -- subscribe -------------------------------------------------------------

def subscribe(args):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    started = time.time()
    deadline = started + args.timeout
    seen = set()
    log = open(args.out, "w", encoding="utf-8")
    total = 0
    strangers = 0
    dups_flagged = 0
    last_arrival = None
    connections = []
    lost_at = []
    sock = None
    packets = None
    subscribe_packet = _packet(0x82, (1).to_bytes(2, "big") + _utf8("bench/#") + b"\x01")
    reason = None
    while reason is None:
        now = time.time()
        if stop:
            reason = stop[0]
            break
        if now >= deadline:
            reason = "timeout"
            break
        if args.arm and os.path.exists(args.arm):
            armed_at = os.path.getmtime(args.arm)
            quiet_since = max(last_arrival or 0, armed_at)
            if now - quiet_since >= args.idle:
                reason = f"idle {args.idle:g} s"
                break
        if sock is None:
            try:
                sock, present, packets, received = open_session(
                    args.port, args.client_id, clean=not args.persistent, timeout=2)
            except (OSError, ConnectionError):
                sock = None
                time.sleep(0.1)
                continue
            sock.settimeout(0.2)
            connections.append({"at": time.time(), "session_present": present})
            try:
                sock.sendall(subscribe_packet)
            except OSError:
                pass
        else:
            try:
                data = sock.recv(262144)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                lost_at.append(time.time())
                sock.close()
                sock = None
                continue
            received = packets.feed(data)
        now = time.time()
        acks = bytearray()
        lines = []
        for first, body in received:
            kind = first >> 4
            if kind == 3:
                qos = (first >> 1) & 3
                topic_len = int.from_bytes(body[:2], "big")
                at = 2 + topic_len
                if qos:
                    acks += b"\x40\x02" + body[at:at + 2]
                    at += 2
                try:
                    seq = int(body[at:at + SEQ_DIGITS])
                except ValueError:  # a probe of benches/bridge.sh, or a stranger
                    strangers += 1
                    continue
                dup = 1 if first & 0x08 else 0
                dups_flagged += dup
                total += 1
                seen.add(seq)
                lines.append(f"{seq} {now:.6f} {dup}\n")
            elif kind == 9 and args.ready and not os.path.exists(args.ready):
                write_marker(args.ready, now)
        if acks:
            try:
                sock.sendall(acks)
            except OSError:
                pass
        if lines:
            log.write("".join(lines))
            last_arrival = now
            if len(seen) >= args.expect:
                reason = "all arrived"
    if sock is not None:
        try:
            sock.sendall(b"\xe0\x00")
            sock.close()
        except OSError:
            pass
    log.close()
    print(json.dumps({
        "client_id": args.client_id,
        "stopped": reason,
        "distinct": len(seen),
        "received": total,
        "dup_flagged": dups_flagged,
        "strangers": strangers,
        "connections": connections,
        "connection_lost_at": lost_at,
    }))


# -- analyze ---------------------------------------------------------------

def analyze(args):
    with open(args.publish, encoding="utf-8") as src:
        pub = json.load(src)
    first_arrival = {}
    received = 0
    per_pub_max = {}
    reordered = 0
    per = pub["messages"] // pub["publishers"]
    extra = pub["messages"] % pub["publishers"]

    def publisher_of(seq):
        # The first `extra` publishers have per + 1 messages.
        big = (per + 1) * extra
        return seq // (per + 1) if seq < big else extra + (seq - big) // max(per, 1)

    with open(args.arrivals, encoding="utf-8") as src:
        for line in src:
            seq_s, at_s, _ = line.split()
            seq, at = int(seq_s), float(at_s)
            received += 1
            if seq in first_arrival:
                continue
            first_arrival[seq] = at
            p = publisher_of(seq)
            if seq < per_pub_max.get(p, -1):
                reordered += 1
            else:
                per_pub_max[p] = seq
    expected = args.messages
    distinct = sum(1 for s in first_arrival if s < expected)
    out = {
        "published": expected,
        "acked": pub.get("acked"),
        "publish_rate": pub.get("publish_rate"),
        "publish_s": pub.get("publish_s"),
        "arrived": distinct,
        "lost": expected - distinct,
        "duplicates": received - len(first_arrival),
        "strangers": len(first_arrival) - distinct,
        "reordered": reordered,
        "publisher_errors": pub.get("errors") or [],
    }
    times = sorted(first_arrival.values())
    if times:
        span = times[-1] - times[0]
        out["forward_s"] = span
        out["forward_rate"] = (len(times) - 1) / span if span > 0 else None
        out["end_to_end_s"] = times[-1] - pub["first_send"]
        out["end_to_end_rate"] = len(times) / out["end_to_end_s"] if out["end_to_end_s"] > 0 else None
        if pub.get("last_ack"):
            out["last_arrival_after_last_ack_s"] = times[-1] - pub["last_ack"]
    if args.restart is not None:
        if args.subscriber:
            with open(args.subscriber, encoding="utf-8") as src:
                back = [c["at"] for c in json.load(src)["connections"] if c["at"] >= args.restart]
            if back:
                out["subscriber_back_after_restart_s"] = back[0] - args.restart
        before = [t for t in times if t < args.restart]
        after = [t for t in times if t >= args.restart]
        out["before_restart"] = len(before)
        out["backlog"] = len(after)
        if args.kill is not None:
            out["arrived_during_outage"] = sum(1 for t in before if t >= args.kill)
        if after:
            out["first_backlog_after_restart_s"] = after[0] - args.restart
            out["drain_s"] = after[-1] - args.restart
            span = after[-1] - after[0]
            out["catchup_s"] = span
            out["catchup_rate"] = (len(after) - 1) / span if span > 0 else None
    print(json.dumps(out))


# -- probe -----------------------------------------------------------------

def probe(args):
    """Until one arrives at the remote: a QoS 1 PUBLISH to the local
    broker's `bench/probe` every 0.5 s. Prints the seconds it took."""
    started = time.time()
    deadline = started + args.timeout
    sub, _, sub_packets, _ = open_session(args.remote, "bench-bridge-probe-sub", clean=True)
    sub.sendall(_packet(0x82, (1).to_bytes(2, "big") + _utf8("bench/probe") + b"\x01"))
    sub.settimeout(0.5)
    pub, _, _, _ = open_session(args.local, "bench-bridge-probe-pub", clean=True)
    subscribed = False
    next_send = 0.0
    packet_id = 0
    while time.time() < deadline:
        if subscribed and time.time() >= next_send:
            packet_id += 1
            pub.sendall(_packet(0x32, _utf8("bench/probe") + packet_id.to_bytes(2, "big") + b"probe"))
            next_send = time.time() + 0.5
        try:
            data = sub.recv(4096)
        except socket.timeout:
            continue
        if not data:
            sys.exit("the remote closed the probe's subscriber")
        for first, body in sub_packets.feed(data):
            if first >> 4 == 9:
                subscribed = True
            elif first >> 4 == 3:
                if (first >> 1) & 3:
                    topic_len = int.from_bytes(body[:2], "big")
                    sub.sendall(b"\x40\x02" + body[2 + topic_len:4 + topic_len])
                print(f"{time.time() - started:.3f}")
                for s in (sub, pub):
                    s.sendall(b"\xe0\x00")
                    s.close()
                return
    sys.exit(f"nothing crossed the bridge within {args.timeout:g} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)

    p = modes.add_parser("publish", help="publish numbered QoS 1 messages")
    p.add_argument("port", type=int)
    p.add_argument("--run", required=True, help="topic level naming this run")
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--inflight", type=int, default=100)
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--rate", type=float, help="msg/s over all publishers (default unpaced)")
    p.add_argument("--started", help="file to receive the wall time of the first send")

    s = modes.add_parser("subscribe", help="count arrivals on bench/#")
    s.add_argument("port", type=int)
    s.add_argument("--client-id", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--expect", type=int, required=True)
    s.add_argument("--persistent", action="store_true", help="clean session 0")
    s.add_argument("--ready", help="file written after the first SUBACK")
    s.add_argument("--arm", help="once this file exists, --idle applies")
    s.add_argument("--idle", type=float, default=15)
    s.add_argument("--timeout", type=float, default=600)

    a = modes.add_parser("analyze", help="figures of one phase")
    a.add_argument("--publish", required=True)
    a.add_argument("--arrivals", required=True)
    a.add_argument("--messages", type=int, required=True)
    a.add_argument("--restart", type=float)
    a.add_argument("--kill", type=float)
    a.add_argument("--subscriber", help="the subscriber's JSON: when it reconnected")

    b = modes.add_parser("probe", help="wait until the bridge forwards")
    b.add_argument("local", type=int)
    b.add_argument("remote", type=int)
    b.add_argument("--timeout", type=float, default=60)

    args = parser.parse_args()
    if args.mode == "probe":
        probe(args)
    elif args.mode == "publish":
        if args.payload < SEQ_DIGITS:
            sys.exit(f"--payload must be at least {SEQ_DIGITS}")
        publish(args)
    elif args.mode == "subscribe":
        subscribe(args)
    else:
        analyze(args)


if __name__ == "__main__":
    main()
