#!/usr/bin/env python3
"""Records what a broker does, case by case, under one ACL file.

Run against Mosquitto (the default: the script starts /usr/sbin/mosquitto on
a free 127.0.0.1 port) to learn the reference answers, or with --broker-port
against a broker that is already running (petrel, started by a Rust test) to
get the same record for comparison. Everything broker-specific is in
start_mosquitto(); the cases and the record do not depend on the broker.

    acl_parity.py --acl acl.txt --passwords users.txt --cases cases.json

--passwords holds `user:password` lines in plain text: the script needs the
passwords to log in, and hashes a copy for Mosquitto with mosquitto_passwd.

--cases is a JSON list (or `-` for stdin). Each case is an object:

    action      "publish" or "subscribe"
    topic       topic name (publish) or topic filter (subscribe)
    user        username, or null/absent for an anonymous client
    password    optional; taken from --passwords when absent
    client_id   optional; "parity-<index>" when absent
    version     "5" (default) or "3.1.1"
    qos         subscribe only: the QoS requested, 1 by default (a publish is
                always QoS 1, so that its PUBACK carries the answer)
    probes      subscribe only: topics the publisher sends after the SUBACK;
                defaults to [topic] when topic has no wildcard
    publisher   subscribe only: user who sends the probes (default --admin)
    observer    publish only: user who subscribes to topic to see whether
                the message is delivered (default --admin; none if neither)

The record, printed as one JSON list on stdout, has per case:

    connack     CONNACK reason code (v5 numbering; paho maps 3.1.1 codes)
    puback      publish: PUBACK reason code; a 3.1.1 PUBACK has no code, so
                there 0 only means that a PUBACK arrived
    delivered   publish with an observer: whether the observer received it
    suback      subscribe: the SUBACK code for topic (granted QoS or failure)
    received    subscribe: the probe topics that arrived, in arrival order
    probe_pubacks  subscribe: the publisher's PUBACK code per probe
    disconnect  the reason code if the broker closed the case's connection
    error       what went wrong with the case itself, if anything

Absence is established without waiting out a timer: after its probes the
sender publishes to `parity-sentinel/<case index>`, which the
receiver also subscribes to; brokers deliver one publisher's messages to one
subscriber in order, so whatever was coming has come when the sentinel does.
For that every client needs access to `parity-sentinel/#`, so the script
adds `topic readwrite parity-sentinel/#` to the anonymous section and to
every user's section (creating sections for users in --passwords that have
none). That leaves every other answer unchanged: sections are searched first
and patterns only when a section grants nothing, and a section holding only
this line grants nothing else. A broker given --broker-port must have been
started with the file that --emit-acl writes. An ACL that denies a client
`parity-sentinel/...` outright defeats this; such a case reports
"sentinel did not arrive" in error.
"""

import argparse
import json
import os
import pwd
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import paho.mqtt.client as mqtt
except ImportError as error:  # pragma: no cover - depends on the machine
    sys.stderr.write(f"paho-mqtt 2.x is needed ({error}): pip install paho-mqtt\n")
    sys.exit(3)

SENTINEL_PREFIX = "parity-sentinel"
SENTINEL_LINE = f"topic readwrite {SENTINEL_PREFIX}/#"


class CaseError(Exception):
    """The case could not be run as written; recorded, the next case runs."""


def with_sentinel(acl_text, usernames):
    """The ACL with sentinel access added to every section (see the module doc)."""
    out = [SENTINEL_LINE]
    seen = set()
    for line in acl_text.splitlines():
        out.append(line)
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0] == "user":
            seen.add(words[1].strip())
            out.append(SENTINEL_LINE)
    for name in usernames:
        if name not in seen:
            out += [f"user {name}", SENTINEL_LINE]
    return "\n".join(out) + "\n"


def read_passwords(path):
    users = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep:
            raise SystemExit(f"{path}: expected user:password, got {line!r}")
        users[name] = password
    return users


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mosquitto(binary, acl_text, passwords, workdir, deadline):
    """Starts Mosquitto with this ACL and these users; returns (port, process).

    Readiness is Mosquitto's own "running" log line, not a retry loop.
    """
    port = free_port()
    pw_path = workdir / "passwords"
    pw_path.write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(pw_path)], check=True)
    acl_path = workdir / "acl"
    acl_path.write_text(acl_text)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                f"password_file {pw_path}",
                f"acl_file {acl_path}",
                "persistence false",
                "log_dest stderr",
                "log_type all",
                # Started as root, Mosquitto would switch to user "mosquitto",
                # who cannot read this private temporary directory.
                f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()

    def pump():
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    log = []
    end = time.monotonic() + deadline
    while True:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise SystemExit("mosquitto did not report running:\n" + "".join(log))
        if line is None:
            raise SystemExit("mosquitto exited during start-up:\n" + "".join(log))
        log.append(line)
        if " running" in line:
            return port, process


class Conn:
    """One client, driven step by step: each call waits for its own answer."""

    def __init__(self, port, version, client_id, username, password, timeout):
        self.timeout = timeout
        self.events = queue.Queue()
        self.messages = []
        self.disconnect = None
        self.version = version
        protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
        kwargs = {} if version == "5" else {"clean_session": True}
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        put = self.events.put
        self.client.on_connect = lambda c, u, f, rc, p: put(("connack", rc.value))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: put(
            ("suback", mid, [rc.value for rc in rcs])
        )
        self.client.on_publish = lambda c, u, mid, rc, p: put(("puback", mid, rc.value))
        self.client.on_message = lambda c, u, msg: put(("message", msg.topic))
        self.client.on_disconnect = lambda c, u, f, rc, p: put(("disconnect", rc.value))
        try:
            if version == "5":
                self.client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
            else:
                self.client.connect("127.0.0.1", port, keepalive=30)
        except OSError as error:
            raise CaseError(f"cannot connect: {error}") from error
        self.client.loop_start()
        self.connack = self._wait(lambda e: e[0] == "connack")[1]

    def _wait(self, wanted):
        end = time.monotonic() + self.timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise CaseError("no answer from the broker in time") from None
            if event[0] == "message":
                self.messages.append(event[1])
            elif event[0] == "disconnect":
                self.disconnect = event[1]
            if wanted(event):
                return event
            if event[0] == "disconnect":
                raise CaseError("connection closed by the broker")

    @property
    def refused(self):
        return self.connack >= 0x80 or (self.version != "5" and self.connack != 0)

    def subscribe(self, topic, qos):
        try:
            _, mid = self.client.subscribe(topic, qos)
        except ValueError as error:
            raise CaseError(f"paho refused to send {topic!r}: {error}") from None
        return self._wait(lambda e: e[0] == "suback" and e[1] == mid)[2][0]

    def publish(self, topic, qos, payload):
        try:
            info = self.client.publish(topic, payload, qos)
        except ValueError as error:
            raise CaseError(f"paho refused to send {topic!r}: {error}") from None
        return self._wait(lambda e: e[0] == "puback" and e[1] == info.mid)[2]

    def wait_for_message(self, topic):
        if topic not in self.messages:
            try:
                self._wait(lambda e: e[0] == "message" and e[1] == topic)
            except CaseError:
                raise CaseError("sentinel did not arrive") from None
        return [t for t in self.messages if not t.startswith(SENTINEL_PREFIX + "/")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def has_wildcard(topic):
    return "+" in topic or "#" in topic


def run_case(index, case, port, passwords, admin, timeout):
    user = case.get("user")
    version = str(case.get("version", "5"))
    qos = int(case.get("qos", 1))
    client_id = case.get("client_id", f"parity-{index}")
    topic = case["topic"]
    result = {
        "name": case.get("name", str(index)),
        "action": case["action"],
        "user": user,
        "client_id": client_id,
        "version": version,
        "topic": topic,
    }

    def login(name, cid, ver="5", secret=None):
        if name is not None and secret is None:
            if name not in passwords:
                raise CaseError(f"no password for user {name!r}")
            secret = passwords[name]
        conn = Conn(port, ver, cid, name, secret, timeout)
        conns.append(conn)
        return conn

    def helper(name, role):
        """A publisher or observer: any refusal spoils the case."""
        conn = login(name, f"{client_id}-{role}")
        if conn.refused:
            raise CaseError(f"{role} {name!r} refused: CONNACK {conn.connack}")
        return conn

    def must_subscribe(conn, filter_, role):
        code = conn.subscribe(filter_, 1)
        if code >= 0x80:
            raise CaseError(f"{role} refused {filter_!r}: SUBACK {code}")

    conns = []
    try:
        main = login(user, client_id, version, case.get("password"))
        result["connack"] = main.connack
        if main.refused:
            return result
        # Named by index: a client id may hold characters a topic may not.
        sentinel = f"{SENTINEL_PREFIX}/{index}"
        if case["action"] == "publish":
            observer_name = case.get("observer", admin)
            observer = None
            if observer_name is not None:
                observer = helper(observer_name, "observer")
                must_subscribe(observer, topic, "observer")
                must_subscribe(observer, sentinel, "observer")
            result["puback"] = main.publish(topic, 1, f"case {index}")
            if observer is not None:
                main.publish(sentinel, 1, "sentinel")
                result["delivered"] = topic in observer.wait_for_message(sentinel)
        elif case["action"] == "subscribe":
            result["suback"] = main.subscribe(topic, qos)
            must_subscribe(main, sentinel, "subscriber")
            probes = case.get("probes", [] if has_wildcard(topic) else [topic])
            publisher_name = case.get("publisher", admin)
            if probes:
                if publisher_name is None:
                    raise CaseError("probes need a publisher (or --admin)")
                publisher = helper(publisher_name, "publisher")
                result["probe_pubacks"] = {
                    p: publisher.publish(p, 1, f"probe {index}") for p in probes
                }
                publisher.publish(sentinel, 1, "sentinel")
                result["received"] = main.wait_for_message(sentinel)
        else:
            raise CaseError(f"unknown action {case['action']!r}")
    except CaseError as error:
        result["error"] = str(error)
    finally:
        if conns and conns[0].disconnect is not None:
            result["disconnect"] = conns[0].disconnect
        for conn in conns:
            conn.close()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--acl", required=True, help="the ACL file under test")
    p.add_argument("--passwords", required=True, help="user:password lines, plain text")
    p.add_argument("--cases", help="JSON list of cases, or - for stdin")
    p.add_argument("--admin", help="default publisher/observer user")
    p.add_argument("--broker-port", type=int, help="use this running broker")
    p.add_argument(
        "--emit-acl", help="write the ACL with sentinel access here and exit"
    )
    p.add_argument("--mosquitto", default="/usr/sbin/mosquitto")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per answer")
    args = p.parse_args()

    passwords = read_passwords(args.passwords)
    acl_text = with_sentinel(Path(args.acl).read_text(), passwords)
    if args.emit_acl:
        Path(args.emit_acl).write_text(acl_text)
        return
    if not args.cases:
        p.error("--cases is required unless --emit-acl is given")
    source = sys.stdin if args.cases == "-" else open(args.cases)
    with source:
        cases = json.load(source)

    broker = None
    workdir = None
    if args.broker_port:
        port = args.broker_port
    else:
        if not shutil.which("mosquitto_passwd"):
            raise SystemExit("mosquitto_passwd is needed to hash the password file")
        workdir = Path(tempfile.mkdtemp(prefix="acl-parity-"))
        port, broker = start_mosquitto(
            args.mosquitto, acl_text, passwords, workdir, args.timeout * 2
        )
    try:
        results = [
            run_case(i, case, port, passwords, args.admin, args.timeout)
            for i, case in enumerate(cases)
        ]
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
