'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { solver, makeChallenge, decodePayload } = require('./support.js');

async function runToEnd(challenge, options) {
  const search = solver.createSearch(challenge, options);
  return (await solver.runSearch(search, {})).number;
}

test('finds the number for every salt remainder and digit-count boundary', async () => {
  // Salt lengths 1..130 put the digits at every offset of the last block and
  // across the block boundary; the numbers cross 9→10, 99→100, 9999→10000.
  for (let length = 1; length <= 130; length++) {
    const salt = 's'.repeat(length - 1) + '&';
    for (const number of [0, 9, 10, 99, 100, 9999, 10000, 12345]) {
      const found = await runToEnd(makeChallenge({ number, maxnumber: 12345, salt }));
      assert.equal(found, number, `salt length ${length}, number ${number}`);
    }
  }
});

test('the WebCrypto engine agrees with the pure-JS engine', async () => {
  for (const number of [0, 1, 777, 5000]) {
    const challenge = makeChallenge({ number, maxnumber: 5000 });
    assert.equal(await runToEnd(challenge, { engine: 'webcrypto' }), number);
    assert.equal(await runToEnd(challenge, { engine: 'js' }), number);
  }
});

test('SHA-512 challenges are solved through WebCrypto', async () => {
  const challenge = makeChallenge({ number: 321, maxnumber: 1000, algorithm: 'SHA-512' });
  assert.equal(await runToEnd(challenge), 321);
  assert.throws(() => solver.createSearch(challenge, { engine: 'js' }), /SHA-256 only/);
});

test('a salt without the & delimiter is hashed with it, as the verifier does', async () => {
  const withDelimiter = makeChallenge({ number: 42, maxnumber: 100, salt: 'abc&' });
  assert.equal(await runToEnd({ ...withDelimiter, salt: 'abc' }), 42);
});

test('a range searches exactly its bounds', async () => {
  const challenge = makeChallenge({ number: 500, maxnumber: 1000 });
  assert.equal(await runToEnd(challenge, { start: 500, end: 500 }), 500);
  assert.equal(await runToEnd(challenge, { start: 0, end: 499 }), -1);
  assert.equal(await runToEnd(challenge, { start: 501, end: 1000 }), -1);
  const search = solver.createSearch(challenge, { start: 0, end: 499 });
  assert.equal((await solver.runSearch(search, {})).hashes, 500);
});

test('maxnumber itself is a candidate', async () => {
  assert.equal(await runToEnd(makeChallenge({ number: 1000, maxnumber: 1000 })), 1000);
});

test('a search resumes where a slice stopped', () => {
  const challenge = makeChallenge({ number: 2500, maxnumber: 3000 });
  const search = solver.createSearch(challenge);
  assert.equal(search.step(1000), -1);
  assert.equal(search.next, 1000);
  assert.equal(search.step(1000), -1);
  assert.equal(search.step(1000), 2500);
  assert.equal(search.next, 2501);
});

test('the payload is the challenge echoed with the number', () => {
  const challenge = makeChallenge({ number: 7, maxnumber: 10 });
  const decoded = decodePayload(solver.encodePayload(challenge, 7));
  assert.deepEqual(decoded, {
    algorithm: challenge.algorithm,
    challenge: challenge.challenge,
    number: 7,
    salt: challenge.salt,
    signature: challenge.signature,
  });
});

test('the payload keeps non-ASCII salts intact (UTF-8 base64)', () => {
  const challenge = makeChallenge({ number: 3, maxnumber: 10, salt: 'é☕?kid=k1&' });
  assert.equal(decodePayload(solver.encodePayload(challenge, 3)).salt, 'é☕?kid=k1&');
});

test('maxNumber (ALTCHA spelling) and JSON text are accepted', () => {
  const { maxnumber, ...rest } = makeChallenge({ number: 1, maxnumber: 10 });
  assert.equal(solver.parseChallenge(JSON.stringify({ ...rest, maxNumber: maxnumber })).maxnumber, 10);
});

test('malformed challenge documents fail with a clear message', () => {
  const good = makeChallenge({ number: 1, maxnumber: 10 });
  const cases = [
    ['{not json', /not JSON/],
    [null, /JSON object/],
    [[good], /JSON object/],
    [{ ...good, algorithm: 'MD5' }, /unsupported algorithm "MD5"/],
    [{ ...good, algorithm: 'SHA-1' }, /unsupported algorithm/],
    [{ ...good, challenge: 'zz' }, /64 hex digits/],
    [{ ...good, challenge: good.challenge.slice(2) }, /64 hex digits/],
    [{ ...good, maxnumber: 0 }, /positive integer/],
    [{ ...good, maxnumber: 1.5 }, /positive integer/],
    [{ ...good, maxnumber: '10' }, /positive integer/],
    [{ ...good, maxnumber: 2 ** 60 }, /positive integer/],
    [{ ...good, salt: '' }, /"salt"/],
    [{ ...good, salt: 'x'.repeat(2000) }, /longer than/],
    [{ ...good, signature: 5 }, /"signature"/],
  ];
  for (const [input, message] of cases) {
    assert.throws(() => solver.parseChallenge(input), message, JSON.stringify(input)?.slice(0, 60));
  }
});

test('bad ranges and engines are refused', () => {
  const challenge = makeChallenge({ number: 1, maxnumber: 10 });
  assert.throws(() => solver.createSearch(challenge, { start: 5, end: 4 }), /range/);
  assert.throws(() => solver.createSearch(challenge, { start: -1 }), /range/);
  assert.throws(() => solver.createSearch(challenge, { engine: 'gpu' }), /unknown engine/);
});
