'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { solver } = require('./support.js');

function reference(bytes) {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

test('matches node:crypto for every length across three blocks', () => {
  // 55/56 and 119/120 are where the padding spills into another block.
  for (let length = 0; length <= 200; length++) {
    const bytes = crypto.randomBytes(length);
    assert.equal(solver.sha256Hex(bytes), reference(bytes), `length ${length}`);
  }
});

test('hashes strings as UTF-8', () => {
  for (const text of ['', 'abc', 'salt?kid=k1&42', 'café ☕ 𝄞'.repeat(9)]) {
    assert.equal(solver.sha256Hex(text), reference(Buffer.from(text, 'utf8')));
  }
});

test('matches the FIPS 180-2 vectors', () => {
  assert.equal(solver.sha256Hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(
    solver.sha256Hex('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
});
