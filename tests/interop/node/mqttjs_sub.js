'use strict';
const USAGE = `Subscribe with MQTT.js and print every message received.

    node mqttjs_sub.js --port P --version 5 --client-id ID --topic F [--topic F2] --qos 1

Prints CONNECTED, then SUBSCRIBED once the SUBACK is in (so the test knows it
can publish), then one MSG line per message. --no-subscribe only reconnects
(to collect what a persistent session queued); --exit-after-subscribe
disconnects cleanly once subscribed; --exit-after-messages N once N messages
have arrived. --subscribe-user-property NAME VALUE adds a v5 user property to
the SUBSCRIBE. --refuse-first N (v5) answers the first N QoS 1 messages with
PUBACK 0x80 and prints REFUSED <topic> <payload> for each instead of MSG.
--show-properties prints each message's v5 properties on a line before it, as
paho_sub.py does:

    PROPS ct=<content type>|rt=<response topic>|cd=<correlation data>|pf=<payload format indicator>|ex=<message expiry>|up=<k:v k:v ...>`;

const { ACK_TIMEOUT_MS, connect, emit, fail, leave, parseArgs, parseQos } = require('./mqttjs_common');

function propertiesLine(properties = {}) {
  const text = (value) => (value === undefined ? '' : String(value));
  const users = [];
  for (const [name, values] of Object.entries(properties.userProperties || {})) {
    // A name sent more than once arrives as an array of its values.
    for (const value of [].concat(values)) users.push(`${name}:${value}`);
  }
  const pf = properties.payloadFormatIndicator;
  return (
    `PROPS ct=${text(properties.contentType)}|rt=${text(properties.responseTopic)}` +
    `|cd=${text(properties.correlationData)}|pf=${pf === undefined ? '' : Number(pf)}` +
    `|ex=${text(properties.messageExpiryInterval)}|up=${users.join(' ')}`
  );
}

function main() {
  const args = parseArgs(USAGE, {
    topic: 'list',
    qos: 'value',
    'no-subscribe': 'flag',
    'exit-after-subscribe': 'flag',
    'exit-after-messages': 'value',
    'show-properties': 'flag',
    'subscribe-user-property': 'pairs',
    'refuse-first': 'value',
  });
  const topics = args.topic || [];
  const qos = parseQos(args.qos);
  if (topics.length === 0 && !args.noSubscribe) fail('give at least one --topic, or --no-subscribe', 64);
  const exitAfter = args.exitAfterMessages === undefined ? 0 : Number(args.exitAfterMessages);
  const userProperties = args.subscribeUserProperty || [];
  if (userProperties.length > 0 && args.version !== '5') fail('SUBSCRIBE properties need --version 5', 64);

  const refuseFirst = args.refuseFirst === undefined ? 0 : Number(args.refuseFirst);
  if (refuseFirst > 0 && args.version !== '5') fail('--refuse-first needs --version 5', 64);
  let refused = 0;
  const extraOptions = {};
  if (refuseFirst > 0) {
    // A negative acknowledgement: MQTT.js then emits no 'message' for it.
    extraOptions.customHandleAcks = (topic, payload, packet, done) => {
      if (refused < refuseFirst) {
        refused += 1;
        if (args.showProperties) emit(propertiesLine(packet.properties));
        emit(`REFUSED ${topic} ${payload.toString('utf8')}`);
        done(0x80);
      } else {
        done(0);
      }
    };
  }
  const { client, state } = connect(args, extraOptions);
  let received = 0;
  client.on('message', (topic, payload, packet) => {
    if (args.showProperties) emit(propertiesLine(packet.properties));
    emit(`MSG ${topic} ${packet.qos} ${packet.retain ? 1 : 0} ${payload.toString('utf8')}`);
    received += 1;
    if (received === exitAfter) leave(client, state);
  });
  client.once('connect', () => {
    if (args.noSubscribe) return;
    const timer = setTimeout(() => fail(`no SUBACK within ${ACK_TIMEOUT_MS} ms`), ACK_TIMEOUT_MS);
    const options = { qos };
    if (userProperties.length > 0) {
      options.properties = { userProperties: Object.fromEntries(userProperties) };
    }
    client.subscribe(topics, options, (error, granted) => {
      clearTimeout(timer);
      if (granted) emit('SUBSCRIBED ' + granted.map((g) => g.qos).join(','));
      if (error) fail(`subscription refused: ${error.message}`);
      if (args.exitAfterSubscribe) leave(client, state);
    });
  });
}

main();
