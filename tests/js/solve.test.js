'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { solver, makeChallenge, decodePayload } = require('./support.js');

test('workers split the range and the finder wins', async () => {
  // Near the top of the range: only the last worker's share holds it.
  const challenge = makeChallenge({ number: 299990, maxnumber: 300000 });
  const progress = [];
  const result = await solver.solve(challenge, { workers: 3, onProgress: (p) => progress.push(p) });
  assert.equal(result.number, 299990);
  assert.equal(result.workers, 3);
  assert.equal(result.maxnumber, 300000);
  assert.equal(decodePayload(result.payload).number, 299990);
  // Shares of ceil(300001 / 3) = 100001: the last worker starts at 200002
  // and alone tries 99989 candidates; the others add what they reported.
  assert.ok(result.hashes >= 99989, `hashes ${result.hashes}`);
  assert.ok(progress.length > 0);
  assert.ok(progress.every((p) => p.maxnumber === 300000));
});

test('small challenges use one worker per 100k candidates at most', async () => {
  const result = await solver.solve(makeChallenge({ number: 5, maxnumber: 1000 }), { workers: 4 });
  assert.equal(result.workers, 1);
  assert.equal(result.number, 5);
});

test('workers: 0 solves on the calling thread', async () => {
  const result = await solver.solve(makeChallenge({ number: 70000, maxnumber: 80000 }), { workers: 0 });
  assert.equal(result.workers, 0);
  assert.equal(result.number, 70000);
  assert.equal(result.hashes, 70001);
});

test('an unsolvable challenge is reported, in workers and inline', async () => {
  const forged = { ...makeChallenge({ number: 1, maxnumber: 10 }), challenge: 'ab'.repeat(32) };
  await assert.rejects(solver.solve(forged, { workers: 1 }), /no number in 0\.\.10/);
  await assert.rejects(solver.solve(forged, { workers: 0 }), /no number in 0\.\.10/);
});

test('an abort stops the workers and rejects with the reason', async () => {
  const challenge = makeChallenge({ number: 9e8, maxnumber: 1e9 });
  const controller = new AbortController();
  const pending = solver.solve(challenge, {
    workers: 2,
    signal: controller.signal,
    onProgress: () => controller.abort(new Error('user left')),
  });
  await assert.rejects(pending, /user left/);
});

test('an abort stops the inline search too', async () => {
  const controller = new AbortController();
  const pending = solver.solve(makeChallenge({ number: 9e8, maxnumber: 1e9 }), {
    workers: 0,
    signal: controller.signal,
    onProgress: () => controller.abort(),
  });
  await assert.rejects(pending, { name: 'AbortError' });
});

test('a worker that cannot start fails the solve', async () => {
  const challenge = makeChallenge({ number: 1, maxnumber: 10 });
  await assert.rejects(solver.solve(challenge, { workers: 1, workerUrl: '/nonexistent/worker.js' }), /Cannot find module/);
});

test('invalid options are refused', async () => {
  const challenge = makeChallenge({ number: 1, maxnumber: 10 });
  await assert.rejects(solver.solve(challenge, { workers: -1 }), /"workers"/);
  await assert.rejects(solver.solve(challenge, { workers: 1.5 }), /"workers"/);
});
