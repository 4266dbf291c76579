"""Shared set-up for the paho-mqtt interop scripts driven by tests/interop.rs.

Every script prints one event per line on stdout (flushed at once), which the
Rust test reads:

    CONNECTED session_present=<0|1>
    SUBSCRIBED <reason code>[,<reason code>...]
    MSG <topic> <qos> <retain 0|1> <payload>
    PUBLISHED <count>

plus, on request, PROPS and LOG lines (see paho_sub.py).

The connection is plain TCP unless asked otherwise: --cafile FILE speaks TLS
and trusts the CAs in FILE (the broker's certificate must also name --host),
--cert FILE --key FILE add a client certificate for mutual TLS, and
--websocket carries MQTT in WebSocket binary messages to the path --ws-path
(default /mqtt, subprotocol "mqtt"); --websocket with --cafile is secure
WebSocket (wss).

Anything unexpected (refused connection, lost connection, paho missing) is
reported on stderr and ends the script with a non-zero status, so the test
fails with the reason instead of waiting for its timeout. A watchdog ends the
script after --deadline seconds in case the test that started it is gone.
"""

import argparse
import os
import sys
import threading

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as error:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"paho-mqtt is not installed ({error}); install it with `pip install paho-mqtt`\n"
    )
    sys.exit(3)

if not hasattr(mqtt, "CallbackAPIVersion"):
    sys.stderr.write(
        "paho-mqtt 2.x is required (found an older version); `pip install -U paho-mqtt`\n"
    )
    sys.exit(3)


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(message, status=2):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    # os._exit: this may run on paho's network thread or the watchdog thread.
    os._exit(status)


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", choices=["3.1.1", "5"], required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument(
        "--no-clean",
        action="store_true",
        help="clean session 0 (3.1.1) / clean start 0 (5) and keep the session",
    )
    p.add_argument(
        "--session-expiry",
        type=int,
        default=0,
        help="v5 Session Expiry Interval in seconds",
    )
    p.add_argument("--deadline", type=float, default=60.0)
    # Transport; without these, plain TCP.
    p.add_argument("--cafile", help="TLS, trusting the CA certificates in this PEM file")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS; needs --cafile")
    p.add_argument("--key", help="private key (PEM) of --cert")
    p.add_argument("--websocket", action="store_true", help="MQTT over WebSocket")
    p.add_argument("--ws-path", default="/mqtt", help="HTTP path of the WebSocket endpoint")
    return p


def check_transport_args(args):
    """--cert and --key go together and need --cafile (a client certificate
    only means something inside TLS)."""
    if (args.cert is None) != (args.key is None):
        fail("--cert and --key go together", 64)
    if args.cert is not None and args.cafile is None:
        fail("--cert needs --cafile", 64)


def start_watchdog(seconds):
    timer = threading.Timer(
        seconds, fail, args=(f"watchdog: still running after {seconds} s", 4)
    )
    timer.daemon = True
    timer.start()


def make_client(args):
    """A client for args.version over the transport asked for; reconnects are
    off so a lost connection is seen."""
    check_transport_args(args)
    start_watchdog(args.deadline)
    transport = "websockets" if args.websocket else "tcp"
    if args.version == "5":
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            protocol=mqtt.MQTTv5,
            transport=transport,
            reconnect_on_failure=False,
        )
    else:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            clean_session=not args.no_clean,
            protocol=mqtt.MQTTv311,
            transport=transport,
            reconnect_on_failure=False,
        )
    if args.websocket:
        client.ws_set_options(path=args.ws_path)
    if args.cafile is not None:
        # Verifies the chain and the host name (default context): a broker
        # certificate the CA did not sign, or one for another name, fails
        # the connect.
        client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)
    return client


def connect(client, args):
    """Sends CONNECT; CONNACK arrives through the network loop."""
    try:
        if args.version == "5":
            properties = None
            if args.session_expiry:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = args.session_expiry
            client.connect(
                args.host,
                args.port,
                keepalive=args.keepalive,
                clean_start=not args.no_clean,
                properties=properties,
            )
        else:
            client.connect(args.host, args.port, keepalive=args.keepalive)
    except OSError as error:
        fail(f"cannot connect to {args.host}:{args.port}: {error}")


def check_connack(reason_code, flags):
    if reason_code.is_failure:
        fail(f"connection refused: {reason_code} ({reason_code.value})")
    emit(f"CONNECTED session_present={int(bool(flags.session_present))}")
