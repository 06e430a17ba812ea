'use strict';
// Node half of bench_js.py: hashes/s of the browser solver's engines on the
// challenge given as JSON in argv[2]. Prints one JSON object per line.
const path = require('node:path');
const os = require('node:os');
const solver = require(path.join(__dirname, '..', 'src', 'powgate', 'static', 'solver.js'));

async function rate(challenge, engine, end) {
  const search = solver.createSearch(challenge, { engine, end });
  const started = performance.now();
  const result = await solver.runSearch(search, {});
  const seconds = (performance.now() - started) / 1000;
  return { hashes: result.hashes, seconds };
}

async function main() {
  const challenge = JSON.parse(process.argv[2]);
  const webcryptoEnd = Number(process.argv[3]);
  // A short warm-up so the JIT has compiled the hot loop before timing.
  await rate(challenge, 'js', Math.min(200000, challenge.maxnumber));
  const report = (name, r) => console.log(JSON.stringify({ name, hashes: r.hashes, seconds: r.seconds }));
  report('pure-JS, 1 thread', await rate(challenge, 'js', challenge.maxnumber));
  report('WebCrypto, 1 thread', await rate(challenge, 'webcrypto', webcryptoEnd));
  const workers = os.availableParallelism();
  const solved = await solver.solve(challenge, { workers });
  report(`pure-JS, ${workers} workers`, { hashes: solved.hashes, seconds: solved.ms / 1000 });
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
