/*
 * powgate solver worker: searches one range of a challenge and reports.
 *
 * Receives {challenge, start, end, engine} (ALTCHA v2: {challenge, start,
 * stride}, counters start, start + stride, …); posts {type: "progress",
 * hashes} after each slice, then {type: "found", number, hashes, key},
 * {type: "exhausted", hashes} or {type: "error", message}. The
 * page terminates the other workers once one has found the number.
 * Runs as a Web Worker (solver.js loaded beside it) or on Node's
 * worker_threads.
 */
(function () {
  'use strict';

  var powgate;
  var post;
  var listen;
  if (typeof importScripts === 'function') {
    importScripts('solver.js');
    powgate = self.powgate;
    post = function (message) {
      self.postMessage(message);
    };
    listen = function (handler) {
      self.onmessage = function (event) {
        handler(event.data);
      };
    };
  } else {
    var parentPort = require('node:worker_threads').parentPort;
    powgate = require('./solver.js');
    post = function (message) {
      parentPort.postMessage(message);
    };
    listen = function (handler) {
      parentPort.on('message', handler);
    };
  }

  async function run(job) {
    var search = powgate.createSearch(job.challenge, {
      start: job.start,
      end: job.end,
      stride: job.stride,
      engine: job.engine,
    });
    var result = await powgate.runSearch(search, {
      onProgress: function (hashes) {
        post({ type: 'progress', hashes: hashes });
      },
    });
    if (result.number >= 0) post({ type: 'found', number: result.number, hashes: result.hashes, key: result.key });
    else post({ type: 'exhausted', hashes: result.hashes });
  }

  listen(function (job) {
    run(job).catch(function (err) {
      post({ type: 'error', message: String((err && err.message) || err) });
    });
  });
})();
