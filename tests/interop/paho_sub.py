"""Subscribe with paho-mqtt and print every message received.

    python3 paho_sub.py --port P --version 5 --client-id ID --topic F [--topic F2] --qos 1

Prints CONNECTED, then SUBSCRIBED once the SUBACK is in (so the test knows it
can publish), then one MSG line per message. --no-subscribe only reconnects
(to collect what a persistent session queued); --exit-after-subscribe
disconnects cleanly once subscribed; --log-pings prints keep-alive traffic as
`LOG Sending PINGREQ` / `LOG Received PINGRESP` lines. --no-local,
--retain-as-published and --retain-handling set v5 subscription options;
--resubscribe subscribes a second time after the first SUBACK (printing
SUBSCRIBED again); --publish-after-subscribe TOPIC PAYLOAD publishes once
subscribed, on the same connection, and prints PUBLISHED 1 on its PUBACK.
--exit-after-messages N disconnects cleanly once N messages have arrived;
--subscribe-user-property NAME VALUE adds a v5 user property to the
SUBSCRIBE. --show-properties prints each message's v5 properties on a line
before it:

    PROPS ct=<content type>|rt=<response topic>|cd=<correlation data>|
          pf=<payload format indicator>|ex=<message expiry>|up=<k:v k:v ...>

(one line; absent properties are empty; the same form mosquitto_sub prints
with -F 'PROPS ct=%C|rt=%R|cd=%D|pf=%F|ex=%E|up=%P').
"""

import paho_common
from paho_common import emit, fail


def properties_line(properties):
    def get(name):
        return getattr(properties, name, None) if properties is not None else None

    def text(value):
        if value is None:
            return ""
        if isinstance(value, bytes):
            return value.decode("utf-8", "backslashreplace")
        return str(value)

    users = " ".join(f"{name}:{value}" for name, value in get("UserProperty") or [])
    return (
        f"PROPS ct={text(get('ContentType'))}|rt={text(get('ResponseTopic'))}"
        f"|cd={text(get('CorrelationData'))}|pf={text(get('PayloadFormatIndicator'))}"
        f"|ex={text(get('MessageExpiryInterval'))}|up={users}"
    )


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
    p.add_argument("--show-properties", action="store_true")
    # v5 subscription options.
    p.add_argument("--no-local", action="store_true")
    p.add_argument("--retain-as-published", action="store_true")
    p.add_argument("--retain-handling", type=int, default=0, choices=[0, 1, 2])
    p.add_argument(
        "--resubscribe",
        action="store_true",
        help="subscribe to the same filters a second time once the first SUBACK is in",
    )
    p.add_argument(
        "--publish-after-subscribe",
        nargs=2,
        metavar=("TOPIC", "PAYLOAD"),
        help="once subscribed, publish this at QoS 1 on the same connection; "
        "prints PUBLISHED 1 when it is acknowledged",
    )
    p.add_argument(
        "--exit-after-messages",
        type=int,
        metavar="N",
        help="disconnect cleanly once N messages have arrived",
    )
    p.add_argument(
        "--subscribe-user-property",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
    )
    args = p.parse_args()
    if not args.topic and not args.no_subscribe:
        p.error("give at least one --topic, or --no-subscribe")
    v5_options = (
        args.no_local
        or args.retain_as_published
        or args.retain_handling
        or args.subscribe_user_property
    )
    if v5_options and args.version != "5":
        p.error("subscription options and properties need --version 5")

    client = paho_common.make_client(args)
    state = {"leaving": False, "subacks": 0, "messages": 0}

    def subscribe():
        if args.version == "5":
            options = paho_common.SubscribeOptions(
                qos=args.qos,
                noLocal=args.no_local,
                retainAsPublished=args.retain_as_published,
                retainHandling=args.retain_handling,
            )
            filters = [(topic, options) for topic in args.topic]
        else:
            filters = [(topic, args.qos) for topic in args.topic]
        properties = None
        if args.subscribe_user_property:
            properties = paho_common.Properties(paho_common.PacketTypes.SUBSCRIBE)
            properties.UserProperty = [tuple(pair) for pair in args.subscribe_user_property]
        result, _mid = client.subscribe(filters, properties=properties)
        if result != 0:
            fail(f"subscribe call failed: {result}")

    def on_connect(client, userdata, flags, reason_code, properties):
        paho_common.check_connack(reason_code, flags)
        if not args.no_subscribe:
            subscribe()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        emit("SUBSCRIBED " + ",".join(str(code.value) for code in reason_codes))
        if any(code.is_failure for code in reason_codes):
            fail("subscription refused: " + ", ".join(str(code) for code in reason_codes))
        state["subacks"] += 1
        if args.resubscribe and state["subacks"] == 1:
            subscribe()
            return
        if args.publish_after_subscribe:
            topic, payload = args.publish_after_subscribe
            client.publish(topic, payload.encode("utf-8"), qos=1)
        if args.exit_after_subscribe:
            state["leaving"] = True
            client.disconnect()

    def on_publish(client, userdata, mid, reason_code, properties):
        if reason_code.is_failure:
            fail(f"publish refused: {reason_code}")
        emit("PUBLISHED 1")

    def on_message(client, userdata, message):
        if args.show_properties:
            emit(properties_line(message.properties))
        payload = message.payload.decode("utf-8", "backslashreplace")
        emit(f"MSG {message.topic} {message.qos} {int(message.retain)} {payload}")
        state["messages"] += 1
        if state["messages"] == args.exit_after_messages:
            # paho acknowledges a QoS 1 message after this returns, behind the
            # DISCONNECT: this one stays unacknowledged, as a consumer that
            # stops mid-message leaves it.
            state["leaving"] = True
            client.disconnect()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not state["leaving"]:
            fail(f"connection lost: {reason_code}")

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
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
