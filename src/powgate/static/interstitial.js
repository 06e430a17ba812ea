/*
 * The interstitial's script: what a browser navigation refused for want of a
 * solution runs (interstitial.html loads it after solver.js).
 *
 * The page itself is static and tiny, the same bytes for every refusal, so
 * the browser caches this script and the solver, and a flood of refused
 * navigations costs the sidecar no challenge and fewer bytes than the
 * requests. The page is built here; the challenge for it is fetched here,
 * solved in Web Workers, and handed back as a single-use cookie for the
 * reload.
 */
(function () {
  'use strict';
  // The same page coming back within moments means the solution is refused
  // (clock skew, blocked cookies): stop after a few rounds instead of
  // reloading forever.
  var MAX_ROUNDS = 3;
  var ROUND_WINDOW_MS = 30000;
  var ROUND_KEY = 'powgate-rounds';
  var CHALLENGE_URL = '/.well-known/powgate/challenge';
  var STYLE =
    ':root{color-scheme:light dark;font-family:system-ui,sans-serif}' +
    'body{display:grid;place-items:center;min-height:100vh;margin:0}' +
    '#powgate{max-width:28rem;padding:2rem;text-align:center}' +
    '#powgate h1{font-size:1.25rem;font-weight:600}' +
    '#powgate progress{width:100%;height:.75rem}' +
    '#powgate-detail{font-size:.85rem;opacity:.7;min-height:1.2em}' +
    '#powgate button{font:inherit;padding:.4rem 1rem}';

  // The page carries no markup of its own (every byte of it is sent for each
  // refused navigation): it is built here, from the cached script.
  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes).forEach(function (name) {
      node.setAttribute(name, attributes[name]);
    });
    if (text) node.textContent = text;
    return node;
  }
  document.head.appendChild(element('meta', { name: 'viewport', content: 'width=device-width, initial-scale=1' }));
  document.head.appendChild(element('meta', { name: 'robots', content: 'noindex' }));
  document.head.appendChild(element('style', {}, STYLE));
  var title = element('h1', { id: 'powgate-title' }, 'Checking your browser…');
  var bar = element('progress', { id: 'powgate-progress', max: '1', value: '0' });
  var detail = element('p', { id: 'powgate-detail', role: 'status', 'aria-live': 'polite' });
  var retry = element('button', { id: 'powgate-retry', type: 'button' }, 'Try again');
  retry.hidden = true;
  var main = element('main', { id: 'powgate' });
  main.appendChild(title);
  main.appendChild(element('p', {}, 'This takes a moment and happens once per visit to a protected page.'));
  main.appendChild(bar);
  main.appendChild(detail);
  var actions = element('p', {});
  actions.appendChild(retry);
  main.appendChild(actions);
  document.body.appendChild(main);

  function stop(message) {
    title.textContent = 'Your browser could not be checked';
    detail.textContent = message;
    retry.hidden = false;
  }

  // Storage may be disabled: the loop guard is then best effort.
  function readRounds() {
    try {
      var last = JSON.parse(sessionStorage.getItem(ROUND_KEY) || 'null');
      var recent = last && last.path === location.pathname && Date.now() - last.at < ROUND_WINDOW_MS;
      return recent ? last.count : 0;
    } catch (err) {
      return 0;
    }
  }

  function writeRounds(count) {
    try {
      sessionStorage.setItem(ROUND_KEY, JSON.stringify({ path: location.pathname, at: Date.now(), count: count }));
    } catch (err) {
      // See readRounds.
    }
  }

  retry.addEventListener('click', function () {
    writeRounds(0);
    location.reload();
  });

  if (!window.powgate) {
    stop('The solver could not be loaded.');
    return;
  }
  var round = readRounds();
  if (round >= MAX_ROUNDS) {
    stop('The check did not succeed after ' + MAX_ROUNDS + ' attempts. Are cookies enabled?');
    return;
  }

  var url = CHALLENGE_URL + '?method=GET&path=' + encodeURIComponent(location.pathname);
  var started;
  fetch(url, { cache: 'no-store', credentials: 'same-origin' })
    .then(function (response) {
      if (!response.ok) throw new Error('No challenge for this page (' + response.status + ').');
      return response.text();
    })
    .then(function (text) {
      var challenge = powgate.parseChallenge(text);
      started = Date.now();
      return powgate.solve(challenge, {
        onProgress: function (p) {
          // A bounded search's worst case is maxnumber + 1 hashes; an ALTCHA
          // v2 search has no worst case, and its maxnumber is the mean number
          // of key derivations.
          bar.value = Math.min(1, p.hashes / (p.maxnumber + 1));
          var seconds = (Date.now() - started) / 1000;
          if (seconds <= 0.5) return;
          var rate = p.hashes / seconds;
          detail.textContent =
            challenge.family === 'v2'
              ? rate.toFixed(1) + ' tries/s (' + challenge.algorithm + ')'
              : Math.round(rate / 1000) + ' k hashes/s';
        },
      });
    })
    .then(function (result) {
      bar.value = 1;
      detail.textContent = 'Done in ' + (result.ms / 1000).toFixed(1) + ' s';
      writeRounds(round + 1);
      document.cookie =
        'powgate_solution=' + result.payload + '; Path=/; Max-Age=60; SameSite=Strict' +
        (location.protocol === 'https:' ? '; Secure' : '');
      location.reload();
    })
    .catch(function (err) {
      stop(err.message);
    });
})();
