'use strict';
const USAGE = `Subscribe with MQTT.js and print every message received.

    node mqttjs_sub.js --port P --version 5 --client-id ID --topic F [--topic F2] --qos 1

Prints CONNECTED, then SUBSCRIBED once the SUBACK is in (so the test knows it
can publish), then one MSG line per message. --no-subscribe only reconnects
(to collect what a persistent session queued); --exit-after-subscribe
disconnects cleanly once subscribed.`;

const { ACK_TIMEOUT_MS, connect, emit, fail, leave, parseArgs, parseQos } = require('./mqttjs_common');

function main() {
  const args = parseArgs(USAGE, {
    topic: 'list',
    qos: 'value',
    'no-subscribe': 'flag',
    'exit-after-subscribe': 'flag',
  });
  const topics = args.topic || [];
  const qos = parseQos(args.qos);
  if (topics.length === 0 && !args.noSubscribe) fail('give at least one --topic, or --no-subscribe', 64);

  const { client, state } = connect(args);
  client.on('message', (topic, payload, packet) => {
    emit(`MSG ${topic} ${packet.qos} ${packet.retain ? 1 : 0} ${payload.toString('utf8')}`);
  });
  client.once('connect', () => {
    if (args.noSubscribe) return;
    const timer = setTimeout(() => fail(`no SUBACK within ${ACK_TIMEOUT_MS} ms`), ACK_TIMEOUT_MS);
    client.subscribe(topics, { qos }, (error, granted) => {
      clearTimeout(timer);
      if (granted) emit('SUBSCRIBED ' + granted.map((g) => g.qos).join(','));
      if (error) fail(`subscription refused: ${error.message}`);
      if (args.exitAfterSubscribe) leave(client, state);
    });
  });
}

main();
