"""Publish messages with paho-mqtt and exit once the broker has them.

    python3 paho_pub.py --port P --version 5 --client-id ID --qos 2 \
        --msg TOPIC PAYLOAD [--msg TOPIC PAYLOAD ...] [--retain]

Messages go out in order. For QoS 1 and 2 the script waits for each PUBACK /
PUBCOMP before the next; then it prints PUBLISHED <count> and disconnects
cleanly. An empty PAYLOAD ('') publishes a zero-length message. With
--version 5, --user-property/--content-type/--response-topic/
--correlation-data/--payload-format-indicator/--message-expiry add PUBLISH
properties to every message.
"""

import threading

import paho_common
from paho_common import PacketTypes, Properties, emit, fail

ACK_TIMEOUT_SECS = 10


def publish_properties(args):
    """The v5 PUBLISH properties asked for, or None."""
    properties = Properties(PacketTypes.PUBLISH)
    given = False
    if args.user_property:
        properties.UserProperty = [tuple(pair) for pair in args.user_property]
        given = True
    if args.content_type is not None:
        properties.ContentType = args.content_type
        given = True
    if args.response_topic is not None:
        properties.ResponseTopic = args.response_topic
        given = True
    if args.correlation_data is not None:
        properties.CorrelationData = args.correlation_data.encode("utf-8")
        given = True
    if args.payload_format_indicator is not None:
        properties.PayloadFormatIndicator = args.payload_format_indicator
        given = True
    if args.message_expiry is not None:
        properties.MessageExpiryInterval = args.message_expiry
        given = True
    return properties if given else None


def main():
    p = paho_common.parser(__doc__)
    p.add_argument("--msg", nargs=2, action="append", metavar=("TOPIC", "PAYLOAD"), required=True)
    p.add_argument("--qos", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--retain", action="store_true")
    # v5 PUBLISH properties, applied to every message.
    p.add_argument("--user-property", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument("--content-type")
    p.add_argument("--response-topic")
    p.add_argument("--correlation-data")
    p.add_argument("--payload-format-indicator", type=int)
    p.add_argument("--message-expiry", type=int)
    args = p.parse_args()
    properties = publish_properties(args)
    if properties is not None and args.version != "5":
        p.error("PUBLISH properties need --version 5")

    client = paho_common.make_client(args)
    state = {"leaving": False}
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        paho_common.check_connack(reason_code, flags)
        connected.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not state["leaving"]:
            fail(f"connection lost: {reason_code}")

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    paho_common.connect(client, args)
    client.loop_start()
    if not connected.wait(ACK_TIMEOUT_SECS):
        fail(f"no CONNACK within {ACK_TIMEOUT_SECS} s")

    for topic, payload in args.msg:
        info = client.publish(
            topic,
            payload.encode("utf-8"),
            qos=args.qos,
            retain=args.retain,
            properties=properties,
        )
        if info.rc != 0:
            fail(f"publish to {topic} failed: {info.rc}")
        if args.qos > 0:
            info.wait_for_publish(timeout=ACK_TIMEOUT_SECS)
            if not info.is_published():
                fail(f"no acknowledgement for QoS {args.qos} publish to {topic} within {ACK_TIMEOUT_SECS} s")
    emit(f"PUBLISHED {len(args.msg)}")

    state["leaving"] = True
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
