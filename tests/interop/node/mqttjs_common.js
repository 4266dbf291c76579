'use strict';
// Shared set-up for the MQTT.js interop scripts driven by tests/interop.rs.
//
// The scripts take the same arguments as the paho-mqtt ones (a subset of
// them) and print the same events, one per line on stdout:
//
//     CONNECTED session_present=<0|1>
//     SUBSCRIBED <reason code>[,<reason code>...]
//     MSG <topic> <qos> <retain 0|1> <payload>
//     PUBLISHED <count>
//     DISCONNECTED
//
// plus, on request, PROPS lines (see mqttjs_sub.js).
//
// The connection is plain TCP unless asked otherwise, with the same options
// as the paho scripts: --cafile FILE speaks TLS and trusts the CAs in FILE
// (the broker's certificate must also name --host), --cert FILE --key FILE
// add a client certificate for mutual TLS, and --websocket carries MQTT in
// WebSocket binary messages to the path --ws-path (default /mqtt,
// subprotocol "mqtt"); --websocket with --cafile is secure WebSocket (wss).
//
// Anything unexpected (refused connection, lost connection, MQTT.js missing)
// is reported on stderr and ends the script with a non-zero status, so the
// test fails with the reason instead of waiting for its timeout. A watchdog
// ends the script after --deadline seconds in case the test that started it
// is gone.
//
// MQTT.js is pinned by package-lock.json in this directory:
// `npm ci --prefix tests/interop/node` installs it.

const fs = require('fs');

const ACK_TIMEOUT_MS = 10000;

function emit(line) {
  // Writes to a pipe are synchronous on Linux, so nothing is lost on exit.
  process.stdout.write(line + '\n');
}

function fail(message, status = 2) {
  process.stderr.write(message + '\n');
  process.exit(status);
}

let mqtt;
try {
  mqtt = require('mqtt');
} catch (error) {
  fail(
    `MQTT.js is not installed (${error.message}); run \`npm ci --prefix tests/interop/node\``,
    3,
  );
}

const COMMON_OPTIONS = {
  host: 'value',
  port: 'value',
  version: 'value',
  'client-id': 'value',
  keepalive: 'value',
  'no-clean': 'flag',
  'session-expiry': 'value',
  deadline: 'value',
  cafile: 'value',
  cert: 'value',
  key: 'value',
  websocket: 'flag',
  'ws-path': 'value',
};

// Parses `--name value`, `--flag` and repeatable options. `extra` maps option
// names to 'value', 'flag', 'list' (repeatable, one value) or 'pairs'
// (repeatable, two values). Returns camelCased keys.
function parseArgs(usage, extra) {
  const spec = { ...COMMON_OPTIONS, ...extra };
  const args = {};
  const argv = process.argv.slice(2);
  const bad = (message) => fail(`${message}\n\n${usage}`, 64);
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].startsWith('--') ? argv[i].slice(2) : '';
    const kind = spec[name];
    const key = name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const take = () => {
      if (i + 1 >= argv.length) bad(`--${name} needs a value`);
      i += 1;
      return argv[i];
    };
    switch (kind) {
      case 'flag':
        args[key] = true;
        break;
      case 'value':
        args[key] = take();
        break;
      case 'list':
        (args[key] = args[key] || []).push(take());
        break;
      case 'pairs': {
        const first = take();
        (args[key] = args[key] || []).push([first, take()]);
        break;
      }
      default:
        bad(`unknown argument ${argv[i]}`);
    }
  }
  if (!args.port || !args.clientId) bad('--port and --client-id are required');
  if (args.version !== '3.1.1' && args.version !== '5') bad('--version is 3.1.1 or 5');
  args.host = args.host || '127.0.0.1';
  args.port = Number(args.port);
  args.keepalive = Number(args.keepalive || 60);
  args.sessionExpiry = Number(args.sessionExpiry || 0);
  args.deadline = Number(args.deadline || 60);
  if (Boolean(args.cert) !== Boolean(args.key)) bad('--cert and --key go together');
  if (args.cert && !args.cafile) bad('--cert needs --cafile');
  args.wsPath = args.wsPath || '/mqtt';
  return args;
}

function parseQos(text) {
  const qos = Number(text || 0);
  if (![0, 1, 2].includes(qos)) fail(`QoS must be 0, 1 or 2, not ${text}`, 64);
  return qos;
}

// mqtt://, mqtts://, ws:// or wss:// for the transport asked for; MQTT.js
// picks the transport from the scheme and offers the WebSocket subprotocol
// "mqtt" itself.
function brokerUrl(args, host) {
  const tls = Boolean(args.cafile);
  if (args.websocket) return `${tls ? 'wss' : 'ws'}://${host}:${args.port}${args.wsPath}`;
  return `${tls ? 'mqtts' : 'mqtt'}://${host}:${args.port}`;
}

// A client for args.version with reconnects off, so a lost connection is
// seen. `state.leaving` is set by the script before it disconnects on
// purpose; any other close fails the script.
function connect(args, extraOptions = {}) {
  const watchdog = setTimeout(
    () => fail(`watchdog: still running after ${args.deadline} s`, 4),
    args.deadline * 1000,
  );
  watchdog.unref();

  const v5 = args.version === '5';
  const options = {
    protocolVersion: v5 ? 5 : 4,
    clientId: args.clientId,
    clean: !args.noClean,
    keepalive: args.keepalive,
    reconnectPeriod: 0,
    connectTimeout: ACK_TIMEOUT_MS,
    resubscribe: false,
    ...extraOptions,
  };
  if (v5 && args.sessionExpiry) {
    options.properties = { sessionExpiryInterval: args.sessionExpiry };
  }
  if (args.cafile) {
    // Node verifies the chain and the host name by default
    // (rejectUnauthorized), so a certificate the CA did not sign, or one for
    // another name, fails the connection.
    options.ca = fs.readFileSync(args.cafile);
    if (args.cert) {
      options.cert = fs.readFileSync(args.cert);
      options.key = fs.readFileSync(args.key);
    }
  }
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  const client = mqtt.connect(brokerUrl(args, host), options);
  const state = { leaving: false };
  client.on('error', (error) => {
    // A message that arrives while the client leaves cannot be acknowledged
    // any more ("write after end"); it stays unacknowledged, as it would
    // with any client that stops there.
    if (!state.leaving) fail(`client error: ${error.message}`);
  });
  client.on('disconnect', (packet) =>
    fail(`the broker sent DISCONNECT with reason code ${packet.reasonCode}`),
  );
  client.on('close', () => {
    if (!state.leaving) fail('connection lost');
  });
  client.on('connect', (connack) => {
    emit(`CONNECTED session_present=${connack.sessionPresent ? 1 : 0}`);
  });
  return { client, state };
}

// Sends DISCONNECT once nothing is in flight, then exits 0 after `line`.
function leave(client, state, line) {
  state.leaving = true;
  client.end(false, {}, () => {
    if (line) emit(line);
    process.exit(0);
  });
}

module.exports = { ACK_TIMEOUT_MS, connect, emit, fail, leave, parseArgs, parseQos };
