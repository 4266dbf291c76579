'use strict';
const USAGE = `Log in with MQTT 5 enhanced authentication (SCRAM-SHA-256) using MQTT.js.

    node mqttjs_scram.js --port P --version 5 --client-id ID \\
        --user NAME --password SECRET

MQTT.js carries the exchange: the CONNECT names the method with client-first
as its data, the broker's AUTH (server-first) reaches handleAuth, which answers
with client-final. Prints

    CONNECTED session_present=<0|1>
    SERVER_PROOF ok

once the CONNACK's Authentication Data (server-final) proves the broker knew
the credentials, then disconnects cleanly; or REFUSED <reason code> and exits
0 when the broker refuses the CONNECT.`;

const crypto = require('crypto');
const { connect, emit, fail, leave, parseArgs } = require('./mqttjs_common');

const METHOD = 'SCRAM-SHA-256';

const hmac = (key, text) => crypto.createHmac('sha256', key).update(text).digest();

// RFC 5802 saslname: ',' and '=' escaped.
const saslname = (user) => user.replace(/=/g, '=3D').replace(/,/g, '=2C');

// The client side of RFC 5802 / 7677, without channel binding (gs2 "n,,").
function scramClient(user, password) {
  const nonce = crypto.randomBytes(18).toString('base64');
  const firstBare = `n=${saslname(user)},r=${nonce}`;
  let serverSignature = null;
  return {
    first: Buffer.from(`n,,${firstBare}`),
    respond(serverFirst) {
      const text = serverFirst.toString('utf8');
      const fields = Object.fromEntries(
        text.split(',').map((field) => [field[0], field.slice(2)]),
      );
      if (!fields.r || !fields.r.startsWith(nonce) || fields.r === nonce) {
        throw new Error(`server-first does not continue our nonce: ${text}`);
      }
      const iterations = Number(fields.i);
      if (!(iterations > 0 && iterations <= 1000000)) {
        throw new Error(`bad iteration count in server-first: ${text}`);
      }
      const salt = Buffer.from(fields.s, 'base64');
      const salted = crypto.pbkdf2Sync(password, salt, iterations, 32, 'sha256');
      const clientKey = hmac(salted, 'Client Key');
      const storedKey = crypto.createHash('sha256').update(clientKey).digest();
      const withoutProof = `c=${Buffer.from('n,,').toString('base64')},r=${fields.r}`;
      const authMessage = `${firstBare},${text},${withoutProof}`;
      const signature = hmac(storedKey, authMessage);
      const proof = Buffer.alloc(clientKey.length);
      for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i] ^ signature[i];
      serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
      return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
    },
    verify(serverFinal) {
      const text = serverFinal.toString('utf8');
      if (!text.startsWith('v=') || serverSignature === null) return false;
      return crypto.timingSafeEqual(Buffer.from(text.slice(2), 'base64'), serverSignature);
    },
  };
}

function main() {
  const args = parseArgs(USAGE, { user: 'value', password: 'value' });
  if (args.version !== '5') fail('enhanced authentication is MQTT 5 only', 64);
  if (!args.user || args.password === undefined) fail('--user and --password are required', 64);

  const scram = scramClient(args.user, args.password);
  const { client, state } = connect(args, {
    properties: { authenticationMethod: METHOD, authenticationData: scram.first },
  });
  // A refused CONNECT is an outcome this script reports, not a failure.
  client.removeAllListeners('error');
  client.on('error', (error) => {
    if (state.leaving) return;
    if (typeof error.code === 'number') {
      emit(`REFUSED ${error.code}`);
      process.exit(0);
    }
    fail(`client error: ${error.message}`);
  });
  client.handleAuth = (packet, callback) => {
    if (packet.reasonCode !== 0x18) {
      callback(new Error(`unexpected AUTH reason code ${packet.reasonCode}`));
      return;
    }
    let clientFinal;
    try {
      clientFinal = scram.respond(packet.properties.authenticationData);
    } catch (error) {
      callback(error);
      return;
    }
    callback(null, {
      cmd: 'auth',
      reasonCode: 0x18,
      properties: { authenticationMethod: METHOD, authenticationData: clientFinal },
    });
  };
  client.once('connect', (connack) => {
    const properties = connack.properties || {};
    if (properties.authenticationMethod !== METHOD) {
      fail(`CONNACK does not repeat the method: ${properties.authenticationMethod}`);
    }
    if (!properties.authenticationData || !scram.verify(properties.authenticationData)) {
      fail('CONNACK does not carry a valid server-final');
    }
    emit('SERVER_PROOF ok');
    leave(client, state);
  });
}

main();
