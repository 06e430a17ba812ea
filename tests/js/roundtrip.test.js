'use strict';
// The Node half of the round trip with the Python code
// (tests/unit/test_js_solver.py): solves the challenges the Python Issuer
// wrote to $POWGATE_JS_CHALLENGES and writes the payloads to
// $POWGATE_JS_SOLUTIONS for the Python Verifier to judge.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { solver } = require('./support.js');

const input = process.env.POWGATE_JS_CHALLENGES;
const output = process.env.POWGATE_JS_SOLUTIONS;

test('solves challenges issued by the Python Issuer', { skip: !(input && output) && 'run through pytest tests/unit/test_js_solver.py' }, async () => {
  const cases = JSON.parse(fs.readFileSync(input, 'utf8'));
  assert.ok(cases.length > 0);
  const results = [];
  for (const { name, challenge, workers, engine } of cases) {
    try {
      const result = await solver.solve(challenge, { workers, engine });
      results.push({ name, payload: result.payload, number: result.number, workers: result.workers });
    } catch (err) {
      results.push({ name, error: err.message });
    }
  }
  fs.writeFileSync(output, JSON.stringify(results));
});
