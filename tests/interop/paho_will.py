"""Connect with paho-mqtt carrying a will, then stay connected until killed.

    python3 paho_will.py --port P --version 5 --client-id ID \
        --will-topic T --will-payload P --will-qos 1 [--will-retain] [--disconnect]

Prints CONNECTED once the CONNACK is in. The test then kills the process with
SIGKILL, so the socket closes without a DISCONNECT and the broker must publish
the will. With --disconnect the script instead disconnects normally right
away (the will must then be discarded) and prints DISCONNECTED.
"""

import paho_common
from paho_common import emit, fail


def main():
    p = paho_common.parser(__doc__)
    p.add_argument("--will-topic", required=True)
    p.add_argument("--will-payload", default="")
    p.add_argument("--will-qos", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--will-retain", action="store_true")
    p.add_argument("--disconnect", action="store_true")
    args = p.parse_args()

    client = paho_common.make_client(args)
    client.will_set(
        args.will_topic,
        args.will_payload.encode("utf-8"),
        qos=args.will_qos,
        retain=args.will_retain,
    )
    state = {"leaving": False}

    def on_connect(client, userdata, flags, reason_code, properties):
        paho_common.check_connack(reason_code, flags)
        if args.disconnect:
            state["leaving"] = True
            client.disconnect()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not state["leaving"]:
            fail(f"connection lost: {reason_code}")
        emit("DISCONNECTED")

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    paho_common.connect(client, args)
    client.loop_forever()


if __name__ == "__main__":
    main()
