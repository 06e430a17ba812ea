'use strict';
// Shared by the Node tests: the solver under test and challenges made the
// way the server makes them (hash of salt + number, HMAC-signed).
const crypto = require('node:crypto');
const path = require('node:path');

const solver = require(path.join(__dirname, '..', '..', 'src', 'powgate', 'static', 'solver.js'));
const KEY = crypto.randomBytes(32);

function makeChallenge({ number, maxnumber, salt = crypto.randomBytes(12).toString('hex') + '?expires=4102444800&kid=k1&', algorithm = 'SHA-256' }) {
  const digest = algorithm.replace('-', '').toLowerCase();
  const challenge = crypto.createHash(digest).update(salt + String(number)).digest('hex');
  const signature = crypto.createHmac(digest, KEY).update(challenge).digest('hex');
  return { algorithm, challenge, maxnumber, salt, signature };
}

function decodePayload(payload) {
  return JSON.parse(Buffer.from(payload, 'base64').toString('utf8'));
}

module.exports = { solver, makeChallenge, decodePayload, KEY };
