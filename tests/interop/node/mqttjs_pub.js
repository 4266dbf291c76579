'use strict';
const USAGE = `Publish messages with MQTT.js and exit once the broker has them.

    node mqttjs_pub.js --port P --version 5 --client-id ID --qos 2 \\
        --msg TOPIC PAYLOAD [--msg TOPIC PAYLOAD ...] [--retain]

Messages go out in order. For QoS 1 and 2 the script waits for each PUBACK /
PUBCOMP before the next; then it prints PUBLISHED <count> and disconnects
cleanly. An empty PAYLOAD ('') publishes a zero-length message.`;

const { ACK_TIMEOUT_MS, connect, emit, fail, leave, parseArgs, parseQos } = require('./mqttjs_common');

function main() {
  const args = parseArgs(USAGE, { msg: 'pairs', qos: 'value', retain: 'flag' });
  const messages = args.msg || [];
  const qos = parseQos(args.qos);
  if (messages.length === 0) fail('give at least one --msg TOPIC PAYLOAD', 64);

  const { client, state } = connect(args);
  const publishFrom = (index) => {
    if (index === messages.length) {
      emit(`PUBLISHED ${messages.length}`);
      leave(client, state);
      return;
    }
    const [topic, payload] = messages[index];
    const timer = setTimeout(
      () => fail(`no acknowledgement for QoS ${qos} publish to ${topic} within ${ACK_TIMEOUT_MS} ms`),
      ACK_TIMEOUT_MS,
    );
    // The callback runs on PUBACK (QoS 1), PUBCOMP (QoS 2), or once written (QoS 0).
    client.publish(topic, Buffer.from(payload, 'utf8'), { qos, retain: Boolean(args.retain) }, (error) => {
      clearTimeout(timer);
      if (error) fail(`publish to ${topic} failed: ${error.message}`);
      publishFrom(index + 1);
    });
  };
  client.once('connect', () => publishFrom(0));
}

main();
