/*
 * powgate browser solver.
 *
 * Solves the three challenge families of docs/protocol.md:
 *  - ALTCHA v1: find `number` in 0..maxnumber with hex(H(salt + number)) ==
 *    challenge; answer with base64 JSON {algorithm, challenge, number, salt,
 *    signature} in X-Powgate-Solution;
 *  - ALTCHA PoW v2: find a counter whose derived key (PBKDF2 and iterated SHA
 *    by WebCrypto, scrypt and Argon2id by hash-wasm's WebAssembly, served
 *    beside this file) starts with keyPrefix; answer with base64 JSON
 *    {challenge, solution: {counter, derivedKey, time}};
 *  - DeepSeek: find `answer` below difficulty with
 *    DeepSeekHashV1(salt_expireAt_answer) == challenge (Keccak in pure
 *    JavaScript below); answer in x-ds-pow-response.
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
  // ALTCHA PoW v2: the schemes and how one try is derived.
  var V2_PBKDF2 = { 'PBKDF2/SHA-256': 'SHA-256', 'PBKDF2/SHA-384': 'SHA-384', 'PBKDF2/SHA-512': 'SHA-512' };
  var V2_ITERATED = { 'SHA-256': 32, 'SHA-384': 48, 'SHA-512': 64 };
  // hash-wasm function → the file that defines it (served as <name>.js beside this one).
  var V2_WASM = { SCRYPT: 'scrypt', ARGON2ID: 'argon2' };
  var MAX_PREFIX_DIGITS = 7;
  var MAX_COUNTER = 0xffffffff;
  var DEEPSEEK = 'DeepSeekHashV1';
  var SOLUTION_HEADER = 'X-Powgate-Solution';
  var DEEPSEEK_HEADER = 'x-ds-pow-response';

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

  function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
  }

  /**
   * Validates a challenge document of any family (object or JSON text) and
   * returns a clean copy with `family` set ("v1", "v2" or "deepseek") and
   * `maxnumber` the last candidate of a bounded search (for v2: the mean
   * number of tries, for progress only). A DeepSeek document may come in
   * DeepSeek's response envelope.
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
    if (!isObject(doc)) fail('a challenge must be a JSON object');
    if (doc.family === 'v1' || doc.family === 'v2' || doc.family === 'deepseek') return doc;
    if (isObject(doc.data) && isObject(doc.data.biz_data)) doc = doc.data.biz_data.challenge;
    if (!isObject(doc)) fail('a challenge must be a JSON object');
    if (isObject(doc.parameters)) return parseV2(doc);
    if (doc.algorithm === DEEPSEEK) return parseDeepSeek(doc);
    return parseV1(doc);
  }

  function parseV2(doc) {
    var p = doc.parameters;
    var known = V2_PBKDF2[p.algorithm] || V2_ITERATED[p.algorithm] || V2_WASM[p.algorithm];
    if (!known) fail('unsupported algorithm ' + JSON.stringify(String(p.algorithm).slice(0, 32)));
    ['nonce', 'salt'].forEach(function (name) {
      if (typeof p[name] !== 'string' || !/^([0-9a-f]{2}){1,64}$/.test(p[name])) fail('"' + name + '" must be hex');
    });
    if (typeof p.keyPrefix !== 'string' || !/^[0-9a-f]*$/.test(p.keyPrefix) || p.keyPrefix.length > MAX_PREFIX_DIGITS) {
      fail('"keyPrefix" must be at most ' + MAX_PREFIX_DIGITS + ' hex digits');
    }
    ['cost', 'keyLength'].forEach(function (name) {
      if (!Number.isSafeInteger(p[name]) || p[name] < 1) fail('"' + name + '" must be a positive integer');
    });
    if (typeof doc.signature !== 'string' || !doc.signature) fail('"signature" must be a non-empty string');
    return {
      family: 'v2',
      algorithm: p.algorithm,
      // The parameters travel back exactly as signed.
      parameters: JSON.parse(JSON.stringify(p)),
      signature: doc.signature,
      maxnumber: Math.pow(16, p.keyPrefix.length),
    };
  }

  function parseDeepSeek(doc) {
    ['challenge', 'salt', 'signature', 'target_path'].forEach(function (name) {
      if (typeof doc[name] !== 'string' || !doc[name]) fail('"' + name + '" must be a non-empty string');
    });
    var challenge = doc.challenge.toLowerCase();
    if (!isHex(challenge, 64)) fail('"challenge" must be 64 hex digits');
    ['difficulty', 'expire_at'].forEach(function (name) {
      if (!Number.isSafeInteger(doc[name]) || doc[name] < 1) fail('"' + name + '" must be a positive integer');
    });
    if (encoder.encode(doc.salt).length > MAX_SALT_BYTES) fail('"salt" is longer than ' + MAX_SALT_BYTES + ' bytes');
    return {
      family: 'deepseek',
      algorithm: DEEPSEEK,
      challenge: challenge,
      salt: doc.salt,
      signature: doc.signature,
      difficulty: doc.difficulty,
      expire_at: doc.expire_at,
      target_path: doc.target_path,
      maxnumber: doc.difficulty - 1,
    };
  }

  /* ALTCHA's own libraries spell the bound `maxNumber`; both are read. */
  function parseV1(doc) {
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
      family: 'v1',
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

  /**
   * The base64 payload that answers `challenge` with `number` (v2: the
   * counter, with `derivedKey` its key in hex and `ms` the solve time).
   */
  function encodePayload(challenge, number, derivedKey, ms) {
    var c = parseChallenge(challenge);
    var doc;
    if (c.family === 'v2') {
      var solution = { counter: number, derivedKey: derivedKey };
      if (ms !== undefined) solution.time = ms;
      doc = { challenge: { parameters: c.parameters, signature: c.signature }, solution: solution };
    } else if (c.family === 'deepseek') {
      doc = {
        algorithm: c.algorithm,
        challenge: c.challenge,
        salt: c.salt,
        answer: number,
        signature: c.signature,
        target_path: c.target_path,
      };
    } else {
      doc = { algorithm: c.algorithm, challenge: c.challenge, number: number, salt: c.salt, signature: c.signature };
    }
    return base64(encoder.encode(JSON.stringify(doc)));
  }

  /** The request header that carries a payload of this challenge's family. */
  function payloadHeader(challenge) {
    return parseChallenge(challenge).family === 'deepseek' ? DEEPSEEK_HEADER : SOLUTION_HEADER;
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
      get tried() {
        return next - start;
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
      get tried() {
        return next - start;
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

  /* ---- DeepSeekHashV1: Keccak-f[1600], rounds 1..23, in the SHA3-256 sponge ----
   * Lanes are pairs of 32-bit words (low, high) in a Uint32Array(50). */
  var KECCAK_RC = [
    0x00000001, 0x00000000, 0x00008082, 0x00000000, 0x0000808a, 0x80000000, 0x80008000, 0x80000000,
    0x0000808b, 0x00000000, 0x80000001, 0x00000000, 0x80008081, 0x80000000, 0x00008009, 0x80000000,
    0x0000008a, 0x00000000, 0x00000088, 0x00000000, 0x80008009, 0x00000000, 0x8000000a, 0x00000000,
    0x8000808b, 0x00000000, 0x0000008b, 0x80000000, 0x00008089, 0x80000000, 0x00008003, 0x80000000,
    0x00008002, 0x80000000, 0x00000080, 0x80000000, 0x0000800a, 0x00000000, 0x8000000a, 0x80000000,
    0x80008081, 0x80000000, 0x00008080, 0x80000000, 0x80000001, 0x00000000, 0x80008008, 0x80000000,
  ];
  var KECCAK_ROTC = [1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14, 27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44];
  // Word offsets (2 × lane index) of the pi walk; no rotation offset is 32.
  var KECCAK_PILN2 = [20, 14, 22, 34, 36, 6, 10, 32, 16, 42, 48, 8, 30, 46, 38, 26, 24, 4, 40, 28, 44, 18, 12, 2];
  var KECCAK_RATE = 136;
  var DEEPSEEK_FIRST_ROUND = 1;

  /* Keccak-f[1600] rounds firstRound..23 on `st`. Theta
   * and chi are written out per column and row: on this hot path, loop
   * indices modulo 5 cost more than the arithmetic itself. */
  function keccakF(st, firstRound) {
    var c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, dl, dh, tlo, thi, lo, hi, r, j, i, y;
    var b0, b1, b2, b3, b4, b5, b6, b7, b8, b9;
    for (var round = firstRound; round < 24; round++) {
      c0 = st[0] ^ st[10] ^ st[20] ^ st[30] ^ st[40];
      c1 = st[1] ^ st[11] ^ st[21] ^ st[31] ^ st[41];
      c2 = st[2] ^ st[12] ^ st[22] ^ st[32] ^ st[42];
      c3 = st[3] ^ st[13] ^ st[23] ^ st[33] ^ st[43];
      c4 = st[4] ^ st[14] ^ st[24] ^ st[34] ^ st[44];
      c5 = st[5] ^ st[15] ^ st[25] ^ st[35] ^ st[45];
      c6 = st[6] ^ st[16] ^ st[26] ^ st[36] ^ st[46];
      c7 = st[7] ^ st[17] ^ st[27] ^ st[37] ^ st[47];
      c8 = st[8] ^ st[18] ^ st[28] ^ st[38] ^ st[48];
      c9 = st[9] ^ st[19] ^ st[29] ^ st[39] ^ st[49];
      // D[x] = C[x - 1] ^ rotl(C[x + 1], 1), applied to column x.
      dl = c8 ^ ((c2 << 1) | (c3 >>> 31));
      dh = c9 ^ ((c3 << 1) | (c2 >>> 31));
      for (y = 0; y < 50; y += 10) {
        st[y] ^= dl;
        st[y + 1] ^= dh;
      }
      dl = c0 ^ ((c4 << 1) | (c5 >>> 31));
      dh = c1 ^ ((c5 << 1) | (c4 >>> 31));
      for (y = 2; y < 50; y += 10) {
        st[y] ^= dl;
        st[y + 1] ^= dh;
      }
      dl = c2 ^ ((c6 << 1) | (c7 >>> 31));
      dh = c3 ^ ((c7 << 1) | (c6 >>> 31));
      for (y = 4; y < 50; y += 10) {
        st[y] ^= dl;
        st[y + 1] ^= dh;
      }
      dl = c4 ^ ((c8 << 1) | (c9 >>> 31));
      dh = c5 ^ ((c9 << 1) | (c8 >>> 31));
      for (y = 6; y < 50; y += 10) {
        st[y] ^= dl;
        st[y + 1] ^= dh;
      }
      dl = c6 ^ ((c0 << 1) | (c1 >>> 31));
      dh = c7 ^ ((c1 << 1) | (c0 >>> 31));
      for (y = 8; y < 50; y += 10) {
        st[y] ^= dl;
        st[y + 1] ^= dh;
      }
      // rho and pi: walk the lanes from (1, 0), rotating each into its place.
      tlo = st[2];
      thi = st[3];
      for (i = 0; i < 24; i++) {
        j = KECCAK_PILN2[i];
        lo = st[j];
        hi = st[j + 1];
        r = KECCAK_ROTC[i];
        if (r < 32) {
          st[j] = (tlo << r) | (thi >>> (32 - r));
          st[j + 1] = (thi << r) | (tlo >>> (32 - r));
        } else {
          r -= 32;
          st[j] = (thi << r) | (tlo >>> (32 - r));
          st[j + 1] = (tlo << r) | (thi >>> (32 - r));
        }
        tlo = lo;
        thi = hi;
      }
      // chi, row by row.
      for (y = 0; y < 50; y += 10) {
        b0 = st[y];
        b1 = st[y + 1];
        b2 = st[y + 2];
        b3 = st[y + 3];
        b4 = st[y + 4];
        b5 = st[y + 5];
        b6 = st[y + 6];
        b7 = st[y + 7];
        b8 = st[y + 8];
        b9 = st[y + 9];
        st[y] = b0 ^ (~b2 & b4);
        st[y + 1] = b1 ^ (~b3 & b5);
        st[y + 2] = b2 ^ (~b4 & b6);
        st[y + 3] = b3 ^ (~b5 & b7);
        st[y + 4] = b4 ^ (~b6 & b8);
        st[y + 5] = b5 ^ (~b7 & b9);
        st[y + 6] = b6 ^ (~b8 & b0);
        st[y + 7] = b7 ^ (~b9 & b1);
        st[y + 8] = b8 ^ (~b0 & b2);
        st[y + 9] = b9 ^ (~b1 & b3);
      }
      st[0] ^= KECCAK_RC[2 * round];
      st[1] ^= KECCAK_RC[2 * round + 1];
    }
  }

  function absorbBlock(st, bytes, off) {
    for (var i = 0; i < KECCAK_RATE / 4; i++) {
      var k = off + 4 * i;
      st[i] ^= bytes[k] | (bytes[k + 1] << 8) | (bytes[k + 2] << 16) | (bytes[k + 3] << 24);
    }
    keccakF(st, DEEPSEEK_FIRST_ROUND);
  }

  /* Pads `block` (bytes[0..len) set) and absorbs it into `st`. */
  function finishKeccak(st, block, len) {
    block.fill(0, len);
    block[len] ^= 0x06;
    block[KECCAK_RATE - 1] ^= 0x80;
    absorbBlock(st, block, 0);
  }

  /** DeepSeekHashV1 of a string (UTF-8) or bytes, as lowercase hex. */
  function deepseekHashHex(data) {
    var bytes = typeof data === 'string' ? encoder.encode(data) : data;
    var st = new Uint32Array(50);
    var full = bytes.length - (bytes.length % KECCAK_RATE);
    for (var off = 0; off < full; off += KECCAK_RATE) absorbBlock(st, bytes, off);
    var block = new Uint8Array(KECCAK_RATE);
    block.set(bytes.subarray(full));
    finishKeccak(st, block, bytes.length - full);
    var out = '';
    for (var i = 0; i < 32; i++) out += ('0' + ((st[i >> 2] >>> (8 * (i & 3))) & 0xff).toString(16)).slice(-2);
    return out;
  }

  /* DeepSeek search over [start, end]: the prefix's full blocks are absorbed once. */
  function createDeepSeekSearch(c, start, end) {
    var prefix = encoder.encode(c.salt + '_' + c.expire_at + '_');
    var mid = new Uint32Array(50);
    var full = prefix.length - (prefix.length % KECCAK_RATE);
    for (var off = 0; off < full; off += KECCAK_RATE) absorbBlock(mid, prefix, off);
    var rest = prefix.length - full;
    var tail = new Uint8Array(2 * KECCAK_RATE);
    var block = new Uint8Array(KECCAK_RATE);
    var st = new Uint32Array(50);
    var target = new Uint32Array(8);
    for (var t = 0; t < 8; t++) {
      var word = 0;
      for (var k = 3; k >= 0; k--) word = (word << 8) | parseInt(c.challenge.substr(t * 8 + k * 2, 2), 16);
      target[t] = word >>> 0;
    }
    tail.set(prefix.subarray(full));
    var next = start;

    function tryOne(n) {
      var text = String(n);
      var len = rest + text.length;
      for (var i = 0; i < text.length; i++) tail[rest + i] = text.charCodeAt(i);
      st.set(mid);
      var from = 0;
      if (len >= KECCAK_RATE) {
        absorbBlock(st, tail, 0);
        from = KECCAK_RATE;
      }
      block.set(tail.subarray(from, len));
      finishKeccak(st, block, len - from);
      for (var w = 0; w < 8; w++) if (st[w] !== target[w]) return false;
      return true;
    }

    return {
      slice: SLICE >> 2,
      get next() {
        return next;
      },
      get tried() {
        return next - start;
      },
      get done() {
        return next > end;
      },
      step: function (limit) {
        var last = Math.min(end, next + limit - 1);
        for (var n = next; n <= last; n++) {
          if (tryOne(n)) {
            next = n + 1;
            return n;
          }
        }
        next = last + 1;
        return -1;
      },
    };
  }

  /* ---- ALTCHA PoW v2: one try is one key derivation ---- */

  function hexBytes(hex) {
    var out = new Uint8Array(hex.length / 2);
    for (var i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  function bytesHex(bytes) {
    var out = '';
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? '0' : '') + bytes[i].toString(16);
    return out;
  }

  /* The hash-wasm function `name`, loading its file on first use: in a
   * worker from beside worker.js, in Node from powgate/static/hash-wasm. */
  function wasmFunction(name, file) {
    var lib = root.hashwasm;
    if (!lib || typeof lib[name] !== 'function') {
      if (typeof importScripts === 'function') {
        importScripts(file + '.js');
      } else if (nodeRequire) {
        var loaded = nodeRequire(nodeRequire('node:path').join(__dirname, 'hash-wasm', file + '.umd.min.js'));
        root.hashwasm = Object.assign(root.hashwasm || {}, loaded);
      } else {
        fail(name + ' runs in a Web Worker: solve with workers >= 1');
      }
      lib = root.hashwasm;
    }
    return lib[name];
  }

  /* The derived key (bytes) of one try: password = nonce || uint32be(counter). */
  async function deriveV2(p, salt, password) {
    var subtle = root.crypto && root.crypto.subtle;
    if (V2_PBKDF2[p.algorithm]) {
      var key = await subtle.importKey('raw', password, 'PBKDF2', false, ['deriveBits']);
      var bits = await subtle.deriveBits(
        { name: 'PBKDF2', salt: salt, iterations: p.cost, hash: V2_PBKDF2[p.algorithm] },
        key,
        p.keyLength * 8,
      );
      return new Uint8Array(bits);
    }
    if (V2_ITERATED[p.algorithm]) {
      var data = new Uint8Array(salt.length + password.length);
      data.set(salt);
      data.set(password, salt.length);
      for (var i = 0; i < Math.max(1, p.cost); i++) data = new Uint8Array(await subtle.digest(p.algorithm, data));
      return data.slice(0, p.keyLength);
    }
    if (p.algorithm === 'SCRYPT') {
      return wasmFunction('scrypt', V2_WASM.SCRYPT)({
        password: password,
        salt: salt,
        costFactor: p.cost,
        blockSize: p.memoryCost || 8,
        parallelism: p.parallelism || 1,
        hashLength: p.keyLength,
        outputType: 'binary',
      });
    }
    return wasmFunction('argon2id', V2_WASM.ARGON2ID)({
      password: password,
      salt: salt,
      iterations: p.cost,
      memorySize: p.memoryCost,
      parallelism: p.parallelism || 1,
      hashLength: p.keyLength,
      outputType: 'binary',
    });
  }

  /* v2 search: counters start, start + stride, ... (workers interleave). */
  function createKdfSearch(c, start, stride) {
    var p = c.parameters;
    var nonce = hexBytes(p.nonce);
    var salt = hexBytes(p.salt);
    var password = new Uint8Array(nonce.length + 4);
    password.set(nonce);
    var view = new DataView(password.buffer);
    var prefix = p.keyPrefix;
    var next = start;
    var tried = 0;
    var search = {
      slice: 1,
      key: null,
      get next() {
        return next;
      },
      get tried() {
        return tried;
      },
      get done() {
        return next > MAX_COUNTER;
      },
      step: async function (limit) {
        for (var k = 0; k < limit && next <= MAX_COUNTER; k++) {
          var counter = next;
          next += stride;
          view.setUint32(nonce.length, counter, false);
          var derived = bytesHex(await deriveV2(p, salt, password));
          tried++;
          if (derived.indexOf(prefix) === 0) {
            search.key = derived;
            return counter;
          }
        }
        return -1;
      },
    };
    return search;
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
    if (c.family === 'v2') {
      var stride = opts.stride === undefined ? 1 : opts.stride;
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(stride) || start < 0 || stride < 1) {
        fail('a v2 search needs 0 <= start and 1 <= stride');
      }
      return createKdfSearch(c, start, stride);
    }
    var end = opts.end === undefined ? c.maxnumber : opts.end;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
      fail('the range must satisfy 0 <= start <= end');
    }
    if (c.family === 'deepseek') return createDeepSeekSearch(c, start, end);
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
   * thread, a needless delay inside a worker). Resolves to {number, hashes,
   * key}; number is -1 when the range holds no solution, key the derived key
   * of a v2 solution.
   */
  async function runSearch(search, opts) {
    while (!search.done) {
      if (opts.signal && opts.signal.aborted) throw abortError(opts.signal);
      var found = await search.step(search.slice || SLICE);
      if (found >= 0) return { number: found, hashes: search.tried, key: search.key || null };
      if (opts.onProgress) opts.onProgress(search.tried);
      if (opts.yieldEachSlice) await yieldToEventLoop();
    }
    return { number: -1, hashes: search.tried, key: null };
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

  /* Splits [0, maxnumber] into contiguous ranges, one per worker (v2:
   * interleaved counters); the first worker to find the number wins and the
   * others are terminated. */
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
                finish(null, { number: msg.number, hashes: sum(), key: msg.key });
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
        handle.post(
          c.family === 'v2'
            ? { challenge: c, start: i, stride: count }
            : { challenge: c, start: start, end: end, engine: opts.engine },
        );
      }
    });
  }

  /**
   * Solves a challenge. Options: workers (default: the number of cores; 0
   * solves on this thread), engine ("js" | "webcrypto"), signal
   * (AbortSignal), onProgress({hashes, maxnumber}), workerUrl.
   * Resolves to {number, payload, header, hashes, ms, workers, maxnumber,
   * family}; `hashes` counts the candidates (v2: key derivations) every
   * worker had tried, as last reported; `header` is the request header the
   * payload goes in.
   */
  async function solve(challenge, options) {
    var c = parseChallenge(challenge);
    var opts = options || {};
    if (opts.signal && opts.signal.aborted) throw abortError(opts.signal);
    var requested = opts.workers === undefined ? defaultWorkers() : opts.workers;
    if (!Number.isInteger(requested) || requested < 0) fail('"workers" must be a non-negative integer');
    // A v2 try costs milliseconds: every worker pays off at once.
    var count = c.family === 'v2' ? requested : Math.min(requested, Math.ceil((c.maxnumber + 1) / MIN_PER_WORKER));
    if (!workersAvailable()) count = 0;
    var report = function (hashes) {
      if (opts.onProgress) opts.onProgress({ hashes: hashes, maxnumber: c.maxnumber });
    };
    var started = now();
    var result = count > 0 ? await solveInWorkers(c, opts, count, report) : await solveInline(c, opts, report);
    var ms = Math.round(now() - started);
    return {
      number: result.number,
      payload: encodePayload(c, result.number, result.key, ms),
      header: payloadHeader(c),
      hashes: result.hashes,
      ms: ms,
      workers: count,
      maxnumber: c.maxnumber,
      family: c.family,
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
      var headers = { 'X-Powgate-Solve-Ms': String(result.ms) };
      headers[result.header] = result.payload;
      response = await send(headers);
    }
    return response;
  }

  var api = {
    version: '0.1.0',
    parseChallenge: parseChallenge,
    encodePayload: encodePayload,
    payloadHeader: payloadHeader,
    deepseekHashHex: deepseekHashHex,
    createSearch: createSearch,
    runSearch: runSearch,
    sha256Hex: sha256Hex,
    solve: solve,
    fetchWithPow: fetchWithPow,
  };

  if (typeof module === 'object' && module.exports) module.exports = api;
  else root.powgate = api;
})(typeof globalThis !== 'undefined' ? globalThis : self);
