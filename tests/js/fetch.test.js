'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const { solver, makeChallenge, decodePayload, KEY } = require('./support.js');

// A loopback server with the sidecar's client protocol: protected requests
// without a valid, unused solution get a challenge; valid ones are echoed.
async function startServer({ rejectAll = false, status = 428 } = {}) {
  const used = new Set();
  const seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const payload = req.headers['x-powgate-solution'];
      seen.push({ method: req.method, payload, solveMs: req.headers['x-powgate-solve-ms'], body: Buffer.concat(chunks).toString() });
      if (payload && !rejectAll && valid(payload) && !used.has(payload)) {
        used.add(payload);
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('admitted ' + Buffer.concat(chunks).toString());
        return;
      }
      const headers = { 'content-type': 'application/json' };
      if (status === 401) headers['www-authenticate'] = 'PoW realm="powgate", algorithm="SHA-256"';
      res.writeHead(status, headers);
      res.end(JSON.stringify(makeChallenge({ number: crypto.randomInt(20000), maxnumber: 20000 })));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/v1/chat`, seen, close: () => server.close() };
}

function valid(payload) {
  const p = decodePayload(payload);
  const signature = crypto.createHmac('sha256', KEY).update(p.challenge).digest('hex');
  const work = crypto.createHash('sha256').update(p.salt + p.number).digest('hex');
  return signature === p.signature && work === p.challenge;
}

test('a challenge answer is solved and the request retried with the solution', async (t) => {
  const server = await startServer();
  t.after(server.close);
  const solved = [];
  const response = await solver.fetchWithPow(server.url, { method: 'POST', body: 'hello' }, { onSolved: (r) => solved.push(r) });
  assert.equal(response.status, 200);
  assert.equal(await response.text(), 'admitted hello');
  assert.equal(server.seen.length, 2);
  assert.equal(server.seen[0].payload, undefined);
  assert.equal(server.seen[1].payload, solved[0].payload);
  assert.equal(server.seen[1].body, 'hello');
  assert.match(server.seen[1].solveMs, /^\d+$/);
});

test('401 with a PoW WWW-Authenticate challenge is handled the same way', async (t) => {
  const server = await startServer({ status: 401 });
  t.after(server.close);
  const response = await solver.fetchWithPow(server.url, {}, { workers: 0 });
  assert.equal(response.status, 200);
});

test('a Request object keeps its method, headers and body across the retry', async (t) => {
  const server = await startServer();
  t.after(server.close);
  const request = new Request(server.url, { method: 'PUT', body: 'payload', headers: { 'x-trace': '1' } });
  const response = await solver.fetchWithPow(request);
  assert.equal(response.status, 200);
  assert.equal(server.seen[1].method, 'PUT');
  assert.equal(server.seen[1].body, 'payload');
});

test('solves are bounded: a server that keeps refusing gets its last answer back', async (t) => {
  const server = await startServer({ rejectAll: true });
  t.after(server.close);
  const response = await solver.fetchWithPow(server.url, {}, { attempts: 2, workers: 0 });
  assert.equal(response.status, 428);
  assert.equal(server.seen.length, 3);
  assert.ok(server.seen.slice(1).every((s) => s.payload));
});

test('responses that are not challenge answers pass through untouched', async (t) => {
  const server = http.createServer((req, res) => {
    res.writeHead(req.url === '/html' ? 428 : 401, { 'content-type': 'text/html' });
    res.end('<p>no</p>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const base = `http://127.0.0.1:${server.address().port}`;
  assert.equal((await solver.fetchWithPow(base + '/html')).status, 428);
  assert.equal((await solver.fetchWithPow(base + '/auth')).status, 401);
});

test('a malformed challenge body rejects with a clear error', async (t) => {
  const server = http.createServer((req, res) => {
    res.writeHead(428, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ algorithm: 'SHA-256', challenge: 'xyz' }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  await assert.rejects(solver.fetchWithPow(`http://127.0.0.1:${server.address().port}/`), /64 hex digits/);
});
