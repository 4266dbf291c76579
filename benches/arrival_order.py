#!/usr/bin/env python3
"""Arrival order across connections, measured from a separate process.

Client B sends SUBSCRIBE and client A publishes (QoS 1) to that topic right
after, without waiting for B's SUBACK; a marker published after the SUBACK
tells whether the first message reached B. Prints how many of TRIALS did.

Usage: python3 benches/arrival_order.py PORT [TRIALS]   (a broker on 127.0.0.1)
"""
import socket
import struct
import sys
import time


def string(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def packet(first, body):
    length, remaining = b"", len(body)
    while True:
        digit, remaining = remaining % 128, remaining // 128
        length += bytes([digit | (0x80 if remaining else 0)])
        if not remaining:
            return bytes([first]) + length + body


def connect(port, client_id):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(packet(0x10, string("MQTT") + bytes([4, 2, 0, 60]) + string(client_id)))
    assert sock.recv(4)[0] == 0x20, "CONNECT refused"
    return sock


def read_packet(sock):
    first = sock.recv(1)[0]
    length, shift = 0, 0
    while True:
        digit = sock.recv(1)[0]
        length += (digit & 127) << shift
        shift += 7
        if not digit & 128:
            break
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return first, body


def trial(port, n):
    topic = "order/%d/%f" % (n, time.time())
    b, a = connect(port, "b%d" % n), connect(port, "a%d" % n)
    b.sendall(packet(0x82, struct.pack(">H", 1) + string(topic) + bytes([1])))
    a.sendall(packet(0x32, string(topic) + struct.pack(">H", 1) + b"first"))
    assert read_packet(a)[0] >> 4 == 4, "PUBACK expected"
    assert read_packet(b)[0] >> 4 == 9, "SUBACK expected"
    a.sendall(packet(0x32, string(topic) + struct.pack(">H", 2) + b"marker"))
    got_first = False
    while True:
        first, body = read_packet(b)
        assert first >> 4 == 3, "PUBLISH expected"
        length = struct.unpack(">H", body[:2])[0]
        packet_id, payload = body[2 + length:4 + length], body[4 + length:]
        b.sendall(bytes([0x40, 2]) + packet_id)
        if payload == b"first":
            got_first = True
        else:
            break
    a.close()
    b.close()
    return got_first


def main():
    port = int(sys.argv[1])
    trials = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    received = sum(trial(port, n) for n in range(trials))
    print("received first %d of %d" % (received, trials))


if __name__ == "__main__":
    main()
