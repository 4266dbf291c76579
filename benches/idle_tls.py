#!/usr/bin/env python3
"""Memory per idle TLS connection: petrel against Mosquitto's TLS listener,
side by side in one run, with the plain TCP figure of both for comparison.

For each broker (petrel: target/release/petrel, Mosquitto: /usr/sbin/mosquitto),
transport (tls, tcp) and connection count, a fresh broker is started on free
127.0.0.1 ports with a TLS and a plain TCP listener, using certificates that
certs/make-dev-certs.sh writes into a temporary directory. The script then

  1. opens and closes a few warm-up connections on the transport measured,
     so one-time costs (TLS configuration, first allocations) fall before
     the baseline,
  2. reads VmRSS from /proc/PID/status (before),
  3. opens N connections: TCP connect, for tls a full handshake with
     Python's ssl module that checks the server certificate against the dev
     CA (TLS 1.3, the default both brokers negotiate), then an MQTT 3.1.1
     CONNECT (clean session, keep alive 600 s, so nothing is sent while they
     wait) and reading its CONNACK (0x20 0x02 0x00 0x00),
  4. holds them idle for --hold seconds and reads VmRSS again (held),
  5. closes them and stops the broker.

bytes per connection = (held - before) / connections established. Runs are
repeated (--repeat) with the brokers alternating which goes first; the
tables show medians. The descriptor limit is raised to its hard limit, which
the brokers inherit.

Usage: python3 benches/idle_tls.py [--connections 2000,5000] [--repeat 3]
           [--hold 3] [--concurrency 32] [--petrel PATH] [--mosquitto PATH]
           [--json]

Build petrel first: cargo build --release.
"""

import argparse
import concurrent.futures
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEPALIVE_S = 600
WARMUP_CONNECTIONS = 8
CONNACK_OK = bytes([0x20, 0x02, 0x00, 0x00])


def string(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def connect_packet(client_id):
    """MQTT 3.1.1 CONNECT: clean session, keep alive KEEPALIVE_S."""
    body = string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", KEEPALIVE_S) + string(client_id)
    assert len(body) < 128, "one-byte remaining length"
    return bytes([0x10, len(body)]) + body


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before CONNACK")
        data += chunk
    return data


def free_port():
    """A port below Linux's default ephemeral range (32768-60999), so the
    thousands of client sockets never take it."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


class Broker:
    """One broker process with a TLS and a plain TCP listener."""

    def __init__(self, kind, binary, work, certs):
        self.kind = kind
        self.ports = {"tls": free_port(), "tcp": free_port()}
        run = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
        self.log = open(run / "broker.log", "wb")
        if kind == "petrel":
            config = run / "petrel.toml"
            config.write_text(
                f'data_dir = "{run / "data"}"\n\n'
                "[[listeners]]\n"
                f'bind = "127.0.0.1:{self.ports["tcp"]}"\n\n'
                "[[listeners]]\n"
                f'bind = "127.0.0.1:{self.ports["tls"]}"\n'
                'transport = "tls"\n'
                f'cert = "{certs / "server.crt"}"\n'
                f'key = "{certs / "server.key"}"\n\n'
                "[log]\n"
                'level = "warn"\n'
            )
            command = [binary, "serve", "-c", str(config)]
            # petrel reads PETREL_* variables as settings and refuses unknown ones.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PETREL_")}
        else:
            config = run / "mosquitto.conf"
            lines = [
                f"listener {self.ports['tcp']} 127.0.0.1",
                f"listener {self.ports['tls']} 127.0.0.1",
                f"cafile {certs / 'ca.crt'}",
                f"certfile {certs / 'server.crt'}",
                f"keyfile {certs / 'server.key'}",
                "allow_anonymous true",
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
            ]
            if os.geteuid() == 0:
                # Started as root, Mosquitto drops to its own user before it
                # reads the key files, which make-dev-certs.sh wrote with
                # mode 0600 in a private directory. Memory does not depend
                # on the user it runs as.
                lines.append("user root")
            config.write_text("\n".join(lines) + "\n")
            command = [binary, "-c", str(config)]
            env = dict(os.environ)
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=run
        )
        self.wait_listening()

    def wait_listening(self):
        deadline = time.monotonic() + 20
        for port in self.ports.values():
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited; see {self.log.name}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.kind} does not listen on {port}")
                    time.sleep(0.05)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def open_connection(port, context, client_id):
    """A connection that got its CONNACK, or the reason it did not."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(connect_packet(client_id))
        connack = read_exactly(sock, 4)
        if connack != CONNACK_OK:
            raise ConnectionError(f"CONNACK {connack.hex()}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def measure(broker, transport, count, context, concurrency, hold):
    port = broker.ports[transport]
    tls = context if transport == "tls" else None
    tag = f"{broker.kind[0]}{transport}{random.randrange(1 << 30):x}"
    for n in range(WARMUP_CONNECTIONS):
        open_connection(port, tls, f"warm-{tag}-{n}").close()
    before = rss_kb(broker.process.pid)
    held, errors = [], []
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(open_connection, port, tls, f"idle-{tag}-{n}") for n in range(count)]
        for future in concurrent.futures.as_completed(futures):
            try:
                held.append(future.result())
            except Exception as error:  # reported, not fatal: the count shows it
                errors.append(repr(error))
    connect_s = time.monotonic() - started
    time.sleep(hold)
    after = rss_kb(broker.process.pid)
    for sock in held:
        sock.close()
    established = len(held)
    return {
        "broker": broker.kind,
        "transport": transport,
        "connections": count,
        "established": established,
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "rss_before_kb": before,
        "rss_held_kb": after,
        "bytes_per_connection": (after - before) * 1024 / established if established else None,
        "connect_s": round(connect_s, 2),
    }


def median(results, key):
    values = [r[key] for r in results if r[key] is not None]
    return statistics.median(values) if values else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", default="2000,5000", help="comma-separated counts")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--hold", type=float, default=3.0, help="seconds held before reading RSS")
    p.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    p.add_argument("--petrel", default=str(ROOT / "target/release/petrel"))
    p.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    p.add_argument("--json", action="store_true", help="also print every run as a JSON line")
    args = p.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    for binary in (args.petrel, args.mosquitto):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} is not an executable (cargo build --release; apt-get install mosquitto)")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(counts) + 100 > hard:
        sys.exit(f"{max(counts)} connections need more descriptors than the hard limit {hard}")

    work = Path(tempfile.mkdtemp(prefix="petrel-idle-tls-"))
    try:
        certs = work / "certs"
        subprocess.run(
            ["bash", str(ROOT / "certs/make-dev-certs.sh"), str(certs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        runs = []
        for repetition in range(args.repeat):
            order = [("petrel", args.petrel), ("mosquitto", args.mosquitto)]
            if repetition % 2:
                order.reverse()
            for count in counts:
                for transport in ("tls", "tcp"):
                    for kind, binary in order:
                        broker = Broker(kind, binary, work, certs)
                        try:
                            result = measure(broker, transport, count, context, args.concurrency, args.hold)
                        finally:
                            broker.stop()
                        result["repetition"] = repetition
                        runs.append(result)
                        if args.json:
                            print(json.dumps(result), flush=True)
                        print(
                            f"# {kind} {transport} x{count}: {result['established']} held, "
                            f"{result['bytes_per_connection'] or 0:.0f} B each",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def pick(kind, transport, count):
        return [r for r in runs if (r["broker"], r["transport"], r["connections"]) == (kind, transport, count)]

    print(f"Medians of {args.repeat} run(s); MQTT 3.1.1, hold {args.hold:g} s, {args.concurrency} handshakes in flight.")
    print()
    print("| connections | transport | established petrel / mosquitto | RSS before kB petrel / mosquitto "
          "| RSS held kB petrel / mosquitto | bytes per connection petrel | mosquitto | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    per_conn = {}
    for count in counts:
        for transport in ("tls", "tcp"):
            pe, mo = pick("petrel", transport, count), pick("mosquitto", transport, count)
            bp, bm = median(pe, "bytes_per_connection"), median(mo, "bytes_per_connection")
            per_conn[(count, transport)] = (bp, bm)
            ratio = f"{bp / bm:.2f}" if bp and bm else "-"
            print(
                f"| {count} | {transport} | {median(pe, 'established'):.0f} / {median(mo, 'established'):.0f} "
                f"| {median(pe, 'rss_before_kb'):.0f} / {median(mo, 'rss_before_kb'):.0f} "
                f"| {median(pe, 'rss_held_kb'):.0f} / {median(mo, 'rss_held_kb'):.0f} "
                f"| {bp:.0f} | {bm:.0f} | {ratio} |"
            )
    print()
    print("| connections | TLS cost per connection (tls - tcp) petrel | mosquitto |")
    print("|---|---|---|")
    for count in counts:
        (tp, tm), (cp, cm) = per_conn[(count, "tls")], per_conn[(count, "tcp")]
        print(f"| {count} | {tp - cp:.0f} | {tm - cm:.0f} |")
    failures = [r for r in runs if r["failed"]]
    for r in failures:
        print(f"\n{r['broker']} {r['transport']} x{r['connections']}: {r['failed']} failed, first: {r['first_error']}")


if __name__ == "__main__":
    main()
