/*
 * powgate browser solver.
 *
 * Solves powgate (ALTCHA v1) challenges: find `number` in 0..maxnumber with
 * hex(H(salt + number)) == challenge, then answer with the base64 JSON
 * payload {algorithm, challenge, number, salt, signature}.
 *
 * SHA-256 runs in pure JavaScript from a precomputed midstate: the salt's
 * full 64-byte blocks are hashed once, and each candidate only costs the
 * last one or two blocks, with the decimal digits updated in place.
 * WebCrypto's digest() is one promise per hash, an order of magnitude slower
 * for millions of tiny messages; it remains the engine for SHA-384/512 and a
 * cross-check for the pure-JS one.
 *
 * Runs as a classic <script> (defines `globalThis.powgate`), inside the
 * worker (loaded by worker.js) and in Node (CommonJS, workers on
 * worker_threads), from one file so the hashing code exists once.
 */
(function (root) {
  'use strict';

  var SUPPORTED = { 'SHA-256': 32, 'SHA-384': 48, 'SHA-512': 64 };
  // Below this many candidates per worker, starting another worker costs
  // more than the hashes it would take over.
  var MIN_PER_WORKER = 100000;
  // Candidates per slice: progress reports and cancellation checks happen
  // between slices, never inside the hot loop.
  var SLICE = 1 << 16;
  // digest() calls in flight at once on the WebCrypto engine; sequential
  // awaits would measure promise latency rather than hashing.
  var SUBTLE_BATCH = 256;
  // Mirrors the verifier's size guard on challenge documents.
  var MAX_SALT_BYTES = 1024;

  var K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);
  var H0 = new Int32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);

  /* Message schedule: 16 big-endian words src[off..off+16) into w[0..64). */
  function expand(src, off, w) {
    var i, x, y;
    for (i = 0; i < 16; i++) w[i] = src[off + i];
    for (i = 16; i < 64; i++) {
      x = w[i - 15];
      y = w[i - 2];
      w[i] =
        (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) +
        w[i - 7] +
        (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10)) +
        w[i - 16] | 0;
    }
  }

  /* Rounds from..to-1 on the working variables `work` (a..h), into `out`.
   * Split from the feed-forward so a search can start at the first round
   * whose word changes from one candidate to the next. */
  function rounds(work, from, to, w, out) {
    var t1, t2;
    var a = work[0], b = work[1], c = work[2], d = work[3];
    var e = work[4], f = work[5], g = work[6], h = work[7];
    for (var i = from; i < to; i++) {
      t1 =
        h +
        (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) +
        ((e & f) ^ (~e & g)) +
        K[i] +
        w[i] | 0;
      t2 =
        (((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) +
        ((a & b) ^ (a & c) ^ (b & c)) | 0;
      h = g;
      g = f;
      f = e;
      e = d + t1 | 0;
      d = c;
      c = b;
      b = a;
      a = t1 + t2 | 0;
    }
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
    out[4] = e;
    out[5] = f;
    out[6] = g;
    out[7] = h;
  }

  /* One block into the chaining value `state`; w and tmp are scratch. */
  function compress(state, src, off, w, tmp) {
    expand(src, off, w);
    rounds(state, 0, 64, w, tmp);
    for (var i = 0; i < 8; i++) state[i] = state[i] + tmp[i] | 0;
  }

  function packWord(bytes, i) {
    return (bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3];
  }

  /* Lays out the final block(s): bytes[0..len) are set; appends padding and
   * the bit length of the whole message, packs them into words. Returns the
   * number of blocks (1 or 2). */
  function finishBlocks(bytes, len, totalLen, words) {
    var blocks = len + 9 <= 64 ? 1 : 2;
    bytes[len] = 0x80;
    bytes.fill(0, len + 1, blocks * 64);
    var bits = totalLen * 8;
    var end = blocks * 64;
    // The length field is 64-bit; messages here are far below 2^32 bits.
    bytes[end - 4] = bits >>> 24;
    bytes[end - 3] = (bits >>> 16) & 0xff;
    bytes[end - 2] = (bits >>> 8) & 0xff;
    bytes[end - 1] = bits & 0xff;
    for (var j = 0; j < blocks * 16; j++) words[j] = packWord(bytes, j * 4);
    return blocks;
  }

  var encoder = new TextEncoder();

  function toHex(state) {
    var out = '';
    for (var i = 0; i < 8; i++) out += ('0000000' + (state[i] >>> 0).toString(16)).slice(-8);
    return out;
  }

  /* Hashes the full 64-byte blocks of `bytes`: the chaining value after
   * them (the midstate) and the leftover bytes, copied into a 128-byte tail. */
  function absorb(bytes, w, tmp, words) {
    var state = new Int32Array(H0);
    var full = bytes.length - (bytes.length % 64);
    for (var off = 0; off < full; off += 64) {
      for (var j = 0; j < 16; j++) words[j] = packWord(bytes, off + j * 4);
      compress(state, words, 0, w, tmp);
    }
    var tail = new Uint8Array(128);
    tail.set(bytes.subarray(full));
    return { state: state, tail: tail, rest: bytes.length - full };
  }

  /** Pure-JS SHA-256 of a string (UTF-8) or bytes, as lowercase hex. */
  function sha256Hex(data) {
    var bytes = typeof data === 'string' ? encoder.encode(data) : data;
    var w = new Int32Array(64);
    var tmp = new Int32Array(8);
    var words = new Int32Array(32);
    var mid = absorb(bytes, w, tmp, words);
    var blocks = finishBlocks(mid.tail, mid.rest, bytes.length, words);
    for (var b = 0; b < blocks; b++) compress(mid.state, words, b * 16, w, tmp);
    return toHex(mid.state);
  }

  function fail(message) {
    throw new TypeError('powgate: ' + message);
  }

  function isHex(value, length) {
    return typeof value === 'string' && value.length === length && /^[0-9a-f]+$/.test(value);
  }

  /**
   * Validates a challenge document (object or JSON text) and returns a clean
   * copy. ALTCHA's own libraries spell the bound `maxNumber`; both are read.
   */
  function parseChallenge(input) {
    var doc = input;
    if (typeof input === 'string') {
      try {
        doc = JSON.parse(input);
      } catch (err) {
        fail('the challenge is not JSON (' + err.message + ')');
      }
    }
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
      fail('a challenge must be a JSON object');
    }
    var size = SUPPORTED[doc.algorithm];
    if (!size) fail('unsupported algorithm ' + JSON.stringify(String(doc.algorithm).slice(0, 32)));
    var challenge = typeof doc.challenge === 'string' ? doc.challenge.toLowerCase() : doc.challenge;
    if (!isHex(challenge, size * 2)) fail('"challenge" must be ' + size * 2 + ' hex digits');
    var maxnumber = doc.maxnumber !== undefined ? doc.maxnumber : doc.maxNumber;
    if (!Number.isSafeInteger(maxnumber) || maxnumber < 1) {
      fail('"maxnumber" must be a positive integer');
    }
    if (typeof doc.salt !== 'string' || !doc.salt) fail('"salt" must be a non-empty string');
    if (encoder.encode(doc.salt).length > MAX_SALT_BYTES) fail('"salt" is longer than ' + MAX_SALT_BYTES + ' bytes');
    if (typeof doc.signature !== 'string' || !doc.signature) {
      fail('"signature" must be a non-empty string');
    }
    return {
      algorithm: doc.algorithm,
      challenge: challenge,
      maxnumber: maxnumber,
      salt: doc.salt,
      signature: doc.signature,
    };
  }

  /* The bytes that precede the number: the salt with ALTCHA's `&` delimiter,
   * which the verifier appends when a salt lacks it. */
  function workPrefix(salt) {
    return encoder.encode(salt.charAt(salt.length - 1) === '&' ? salt : salt + '&');
  }

  function base64(bytes) {
    var binary = '';
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary);
  }

  /** The base64 payload that answers `challenge` with `number`. */
  function encodePayload(challenge, number) {
    var c = parseChallenge(challenge);
    var json = JSON.stringify({
      algorithm: c.algorithm,
      challenge: c.challenge,
      number: number,
      salt: c.salt,
      signature: c.signature,
    });
    return base64(encoder.encode(json));
  }

  /* Pure-JS SHA-256 search over [start, end]. */
  function createJsSearch(c, start, end) {
    var prefix = workPrefix(c.salt);
    var w = new Int32Array(64);
    var tmp = new Int32Array(8);
    var words = new Int32Array(32);
    var absorbed = absorb(prefix, w, tmp, words);
    var mid = absorbed.state;
    var tail = absorbed.tail;
    var r = absorbed.rest;
    var target = new Int32Array(8);
    for (var t = 0; t < 8; t++) target[t] = parseInt(c.challenge.slice(t * 8, t * 8 + 8), 16) | 0;
    var target0 = target[0];
    var state = new Int32Array(8);
    var next = start;
    var digits = 0;
    var blocks = 0;

    // Rebuilds the tail for `next` (only when its digit count changes).
    function layout() {
      var text = String(next);
      digits = text.length;
      for (var i = 0; i < digits; i++) tail[r + i] = text.charCodeAt(i);
      blocks = finishBlocks(tail, r + digits, prefix.length + digits, words);
    }
    layout();

    // Words before the first digit never change, and round i reads word i
    // only: rounds 0..skip-1 are the same for every candidate, run once here.
    var skip = r >> 2;
    var pre = new Int32Array(8);
    expand(words, 0, w);
    rounds(mid, 0, skip, w, pre);
    // With two final blocks, the first changes only when a digit inside it
    // does (the leading digits): its chaining value is kept between those.
    var chain = new Int32Array(8);
    var chainValid = false;

    function matches() {
      for (var k = 0; k < 8; k++) if (state[k] !== target[k]) return false;
      return true;
    }

    return {
      get next() {
        return next;
      },
      get done() {
        return next > end;
      },
      /* Tries up to `limit` candidates; returns the number found or -1. */
      step: function (limit) {
        var last = Math.min(end, next + limit - 1);
        var n = next;
        for (; n <= last; n++) {
          if (blocks === 1) {
            expand(words, 0, w);
            rounds(pre, skip, 64, w, tmp);
            // Only the first word is needed to rule a candidate out.
            if ((mid[0] + tmp[0] | 0) === target0) {
              for (var j = 0; j < 8; j++) state[j] = mid[j] + tmp[j] | 0;
              if (matches()) break;
            }
          } else {
            if (!chainValid) {
              expand(words, 0, w);
              rounds(pre, skip, 64, w, tmp);
              for (var q = 0; q < 8; q++) chain[q] = mid[q] + tmp[q] | 0;
              chainValid = true;
            }
            state.set(chain);
            compress(state, words, 16, w, tmp);
            if (state[0] === target0 && matches()) break;
          }
          // Increment the decimal digits in place; only the words holding
          // changed digits are repacked.
          var i = r + digits - 1;
          while (i >= r && tail[i] === 57) tail[i--] = 48;
          if (i < r) {
            next = n + 1;
            layout();
            chainValid = false;
            continue;
          }
          tail[i]++;
          if (i < 64) chainValid = false;
          for (var wi = i >> 2, we = (r + digits - 1) >> 2; wi <= we; wi++) {
            words[wi] = packWord(tail, wi * 4);
          }
        }
        if (n > last) {
          next = n;
          return -1;
        }
        next = n + 1;
        layout();
        chainValid = false;
        return n;
      },
    };
  }

  /* WebCrypto search over [start, end]: one digest() per candidate, batched. */
  function createSubtleSearch(c, start, end) {
    var subtle = root.crypto && root.crypto.subtle;
    if (!subtle) fail('WebCrypto (crypto.subtle) is not available here');
    var prefix = workPrefix(c.salt);
    var target = c.challenge;
    var next = start;

    function candidate(n) {
      var text = String(n);
      var bytes = new Uint8Array(prefix.length + text.length);
      bytes.set(prefix);
      for (var i = 0; i < text.length; i++) bytes[prefix.length + i] = text.charCodeAt(i);
      return subtle.digest(c.algorithm, bytes);
    }

    function hex(buffer) {
      var view = new Uint8Array(buffer);
      var out = '';
      for (var i = 0; i < view.length; i++) out += (view[i] < 16 ? '0' : '') + view[i].toString(16);
      return out;
    }

    return {
      get next() {
        return next;
      },
      get done() {
        return next > end;
      },
      step: async function (limit) {
        var last = Math.min(end, next + limit - 1);
        while (next <= last) {
          var batchEnd = Math.min(last, next + SUBTLE_BATCH - 1);
          var pending = [];
          for (var n = next; n <= batchEnd; n++) pending.push(candidate(n));
          var digests = await Promise.all(pending);
          for (var k = 0; k < digests.length; k++) {
            if (hex(digests[k]) === target) {
              next = next + k + 1;
              return next - 1;
            }
          }
          next = batchEnd + 1;
        }
        return -1;
      },
    };
  }

  /**
   * A resumable search of [start, end] (inclusive) of one challenge.
   * engine: "js" (default for SHA-256) or "webcrypto" (any supported
   * algorithm). `step(limit)` returns the number found or -1 (for
   * "webcrypto", a promise of it).
   */
  function createSearch(challenge, options) {
    var c = parseChallenge(challenge);
    var opts = options || {};
    var start = opts.start === undefined ? 0 : opts.start;
    var end = opts.end === undefined ? c.maxnumber : opts.end;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
      fail('the range must satisfy 0 <= start <= end');
    }
    var engine = opts.engine || (c.algorithm === 'SHA-256' ? 'js' : 'webcrypto');
    if (engine === 'js') {
      if (c.algorithm !== 'SHA-256') fail('the "js" engine hashes SHA-256 only');
      return createJsSearch(c, start, end);
    }
    if (engine === 'webcrypto') return createSubtleSearch(c, start, end);
    return fail('unknown engine ' + JSON.stringify(String(engine)));
  }

  function now() {
    return typeof performance !== 'undefined' ? performance.now() : Date.now();
  }

  function abortError(signal) {
    if (signal.reason !== undefined) return signal.reason;
    var err = new Error('powgate: solving was aborted');
    err.name = 'AbortError';
    return err;
  }

  function notFound(c) {
    return new Error('powgate: no number in 0..' + c.maxnumber + ' solves this challenge');
  }

  function yieldToEventLoop() {
    return new Promise(function (resolve) {
      setTimeout(resolve, 0);
    });
  }

  /**
   * Drives a search to its end in slices. opts: onProgress(hashes) after each
   * slice, signal (AbortSignal, checked between slices), yieldEachSlice
   * (give the event loop a turn between slices: needed on a page's own
   * thread, a needless delay inside a worker). Resolves to {number, hashes};
   * number is -1 when the range holds no solution.
   */
  async function runSearch(search, opts) {
    var tried = 0;
    while (!search.done) {
      if (opts.signal && opts.signal.aborted) throw abortError(opts.signal);
      var before = search.next;
      var found = await search.step(SLICE);
      if (found >= 0) return { number: found, hashes: tried + found - before + 1 };
      tried += search.next - before;
      if (opts.onProgress) opts.onProgress(tried);
      if (opts.yieldEachSlice) await yieldToEventLoop();
    }
    return { number: -1, hashes: tried };
  }

  async function solveInline(c, opts, report) {
    var search = createSearch(c, { engine: opts.engine });
    var result = await runSearch(search, { onProgress: report, signal: opts.signal, yieldEachSlice: true });
    if (result.number < 0) throw notFound(c);
    return result;
  }

  var defaultWorkerUrl =
    typeof document !== 'undefined' && document.currentScript && document.currentScript.src
      ? new URL('worker.js', document.currentScript.src).href
      : null;
  var nodeRequire = typeof module === 'object' && module.exports && typeof require === 'function' ? require : null;

  /* A uniform handle over a Web Worker or a Node worker_threads Worker. */
  function spawnWorker(opts) {
    if (typeof Worker === 'function') {
      var url = opts.workerUrl || defaultWorkerUrl;
      if (!url) fail('pass options.workerUrl: the worker script location is unknown');
      var web = new Worker(url);
      return {
        listen: function (onMessage, onError) {
          web.onmessage = function (event) {
            onMessage(event.data);
          };
          web.onerror = function (event) {
            event.preventDefault();
            onError(new Error('powgate: worker failed: ' + (event.message || 'cannot load ' + url)));
          };
        },
        post: function (message) {
          web.postMessage(message);
        },
        terminate: function () {
          web.terminate();
        },
      };
    }
    var threads = nodeRequire('node:worker_threads');
    var node = new threads.Worker(opts.workerUrl || nodeRequire('node:path').join(__dirname, 'worker.js'));
    return {
      listen: function (onMessage, onError) {
        node.on('message', onMessage);
        node.on('error', onError);
      },
      post: function (message) {
        node.postMessage(message);
      },
      terminate: function () {
        node.terminate();
      },
    };
  }

  function defaultWorkers() {
    if (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) {
      return navigator.hardwareConcurrency;
    }
    return nodeRequire ? nodeRequire('node:os').availableParallelism() : 1;
  }

  function workersAvailable() {
    return typeof Worker === 'function' || nodeRequire !== null;
  }

  /* Splits [0, maxnumber] into contiguous ranges, one per worker; the first
   * worker to find the number wins and the others are terminated. */
  function solveInWorkers(c, opts, count, report) {
    return new Promise(function (resolve, reject) {
      var total = c.maxnumber + 1;
      var share = Math.ceil(total / count);
      var handles = [];
      var tried = [];
      var exhausted = 0;
      var settled = false;

      function finish(err, value) {
        if (settled) return;
        settled = true;
        handles.forEach(function (h) {
          h.terminate();
        });
        if (opts.signal) opts.signal.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(value);
      }
      function onAbort() {
        finish(abortError(opts.signal));
      }
      function sum() {
        return tried.reduce(function (a, b) {
          return a + b;
        }, 0);
      }

      if (opts.signal) opts.signal.addEventListener('abort', onAbort);
      for (var i = 0; i < count; i++) {
        var start = i * share;
        var end = Math.min(c.maxnumber, start + share - 1);
        var handle;
        try {
          handle = spawnWorker(opts);
        } catch (err) {
          finish(err);
          return;
        }
        handles.push(handle);
        tried.push(0);
        handle.listen(
          (function (index) {
            return function (msg) {
              if (settled) return;
              if (msg.type === 'progress') {
                tried[index] = msg.hashes;
                report(sum());
              } else if (msg.type === 'found') {
                tried[index] = msg.hashes;
                finish(null, { number: msg.number, hashes: sum() });
              } else if (msg.type === 'exhausted') {
                tried[index] = msg.hashes;
                if (++exhausted === count) finish(notFound(c));
              } else if (msg.type === 'error') {
                finish(new Error(msg.message));
              }
            };
          })(i),
          function (err) {
            finish(err instanceof Error ? err : new Error(String(err)));
          },
        );
        handle.post({ challenge: c, start: start, end: end, engine: opts.engine });
      }
    });
  }

  /**
   * Solves a challenge. Options: workers (default: the number of cores; 0
   * solves on this thread), engine ("js" | "webcrypto"), signal
   * (AbortSignal), onProgress({hashes, maxnumber}), workerUrl.
   * Resolves to {number, payload, hashes, ms, workers, maxnumber}; `hashes` counts the
   * candidates every worker had tried, as last reported.
   */
  async function solve(challenge, options) {
    var c = parseChallenge(challenge);
    var opts = options || {};
    if (opts.signal && opts.signal.aborted) throw abortError(opts.signal);
    var requested = opts.workers === undefined ? defaultWorkers() : opts.workers;
    if (!Number.isInteger(requested) || requested < 0) fail('"workers" must be a non-negative integer');
    var count = Math.min(requested, Math.ceil((c.maxnumber + 1) / MIN_PER_WORKER));
    if (!workersAvailable()) count = 0;
    var report = function (hashes) {
      if (opts.onProgress) opts.onProgress({ hashes: hashes, maxnumber: c.maxnumber });
    };
    var started = now();
    var result = count > 0 ? await solveInWorkers(c, opts, count, report) : await solveInline(c, opts, report);
    return {
      number: result.number,
      payload: encodePayload(c, result.number),
      hashes: result.hashes,
      ms: Math.round(now() - started),
      workers: count,
      maxnumber: c.maxnumber,
    };
  }

  /* Is this response the sidecar's challenge answer? 428, or 401 with a
   * `WWW-Authenticate: PoW ...` challenge; either way a JSON body. */
  function isChallengeResponse(response) {
    var type = response.headers.get('content-type') || '';
    if (type.indexOf('application/json') < 0) return false;
    if (response.status === 428) return true;
    var auth = response.headers.get('www-authenticate') || '';
    return response.status === 401 && /^\s*pow\b/i.test(auth);
  }

  /**
   * fetch() that pays the toll: a challenge answer is solved and the request
   * retried with `X-Powgate-Solution` (and `X-Powgate-Solve-Ms`), up to
   * `options.attempts` solves (default 3; a rejected solution comes back
   * with a fresh challenge). Request bodies must be replayable (string,
   * Blob, FormData, URLSearchParams, ArrayBuffer), as for any retry.
   * options: attempts, workers, engine, onProgress, onSolved(result), fetch.
   */
  async function fetchWithPow(input, init, options) {
    var opts = options || {};
    var baseInit = init || {};
    var fetchImpl = opts.fetch || root.fetch.bind(root);
    var attempts = opts.attempts === undefined ? 3 : opts.attempts;
    var template = typeof Request === 'function' && input instanceof Request ? input : null;

    function send(extra) {
      var headers = new Headers(baseInit.headers || (template ? template.headers : undefined));
      Object.keys(extra).forEach(function (name) {
        headers.set(name, extra[name]);
      });
      var merged = Object.assign({}, baseInit, { headers: headers });
      return template ? fetchImpl(new Request(template.clone(), merged)) : fetchImpl(input, merged);
    }

    var response = await send({});
    for (var attempt = 0; attempt < attempts && isChallengeResponse(response); attempt++) {
      var challenge = await response.json();
      var result = await solve(challenge, {
        workers: opts.workers,
        engine: opts.engine,
        onProgress: opts.onProgress,
        signal: baseInit.signal,
      });
      if (opts.onSolved) opts.onSolved(result);
      response = await send({
        'X-Powgate-Solution': result.payload,
        'X-Powgate-Solve-Ms': String(result.ms),
      });
    }
    return response;
  }

  var api = {
    version: '0.1.0',
    parseChallenge: parseChallenge,
    encodePayload: encodePayload,
    createSearch: createSearch,
    runSearch: runSearch,
    sha256Hex: sha256Hex,
    solve: solve,
    fetchWithPow: fetchWithPow,
  };

  if (typeof module === 'object' && module.exports) module.exports = api;
  else root.powgate = api;
})(typeof globalThis !== 'undefined' ? globalThis : self);
