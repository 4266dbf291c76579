"""Subscribe with paho-mqtt and print every message received.

    python3 paho_sub.py --port P --version 5 --client-id ID --topic F [--topic F2] --qos 1

Prints CONNECTED, then SUBSCRIBED once the SUBACK is in (so the test knows it
can publish), then one MSG line per message. --no-subscribe only reconnects
(to collect what a persistent session queued); --exit-after-subscribe
disconnects cleanly once subscribed; --log-pings prints keep-alive traffic as `LOG Sending PINGREQ` /
`LOG Received PINGRESP` lines.
"""

import paho_common
from paho_common import emit, fail


def main():
    p = paho_common.parser(__doc__)
    p.add_argument("--topic", action="append", default=[])
    p.add_argument("--qos", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--no-subscribe", action="store_true")
    p.add_argument("--exit-after-subscribe", action="store_true")
    p.add_argument(
        "--log-pings",
        action="store_true",
        help="print paho's PINGREQ/PINGRESP log lines as LOG lines",
    )
    args = p.parse_args()
    if not args.topic and not args.no_subscribe:
        p.error("give at least one --topic, or --no-subscribe")

    client = paho_common.make_client(args)
    state = {"leaving": False}

    def on_connect(client, userdata, flags, reason_code, properties):
        paho_common.check_connack(reason_code, flags)
        if args.no_subscribe:
            return
        result, _mid = client.subscribe([(topic, args.qos) for topic in args.topic])
        if result != 0:
            fail(f"subscribe call failed: {result}")

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        emit("SUBSCRIBED " + ",".join(str(code.value) for code in reason_codes))
        if any(code.is_failure for code in reason_codes):
            fail("subscription refused: " + ", ".join(str(code) for code in reason_codes))
        if args.exit_after_subscribe:
            state["leaving"] = True
            client.disconnect()

    def on_message(client, userdata, message):
        payload = message.payload.decode("utf-8", "backslashreplace")
        emit(f"MSG {message.topic} {message.qos} {int(message.retain)} {payload}")

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not state["leaving"]:
            fail(f"connection lost: {reason_code}")

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    if args.log_pings:

        def on_log(client, userdata, level, text):
            if "PINGREQ" in text or "PINGRESP" in text:
                emit("LOG " + text)

        client.on_log = on_log
    paho_common.connect(client, args)
    client.loop_forever()


if __name__ == "__main__":
    main()
