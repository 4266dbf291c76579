'use strict';
const USAGE = `Connect with MQTT.js carrying a will, then stay connected until killed.

    node mqttjs_will.js --port P --version 5 --client-id ID \\
        --will-topic T --will-payload P --will-qos 1 [--will-retain] [--disconnect]

Prints CONNECTED once the CONNACK is in. The test then kills the process with
SIGKILL, so the socket closes without a DISCONNECT and the broker must publish
the will. With --disconnect the script instead disconnects normally right
away (the will must then be discarded) and prints DISCONNECTED.`;

const { connect, fail, leave, parseArgs, parseQos } = require('./mqttjs_common');

function main() {
  const args = parseArgs(USAGE, {
    'will-topic': 'value',
    'will-payload': 'value',
    'will-qos': 'value',
    'will-retain': 'flag',
    disconnect: 'flag',
  });
  if (!args.willTopic) fail('--will-topic is required', 64);
  const { client, state } = connect(args, {
    will: {
      topic: args.willTopic,
      payload: Buffer.from(args.willPayload || '', 'utf8'),
      qos: parseQos(args.willQos),
      retain: Boolean(args.willRetain),
    },
  });
  client.once('connect', () => {
    if (args.disconnect) leave(client, state, 'DISCONNECTED');
  });
}

main();
