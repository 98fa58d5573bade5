/**
 * The ops console: one page, its script and its style, served by the operations listener under
 * /console/. It logs in with an admin token (kept in the tab's sessionStorage, sent as a bearer
 * header: no cookie, so no cross-site request can use it), then polls the admin API. The page
 * is static and holds no data; everything it shows comes from the API, under the caller's
 * permissions, and is written with textContent (never as HTML). The content security policy
 * allows scripts and styles from this origin only.
 */

export const CONSOLE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Portcullis ops console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/style.css">
<script src="/console/app.js" defer></script>
</head>
<body>
<header>
  <h1>Portcullis</h1>
  <span id="who" data-testid="who"></span>
  <button id="logout" type="button" hidden>Log out</button>
</header>
<main>
  <section id="login" data-testid="login">
    <h2>Log in</h2>
    <form id="login-form" autocomplete="off">
      <label>Admin token <input id="token" name="token" type="password" placeholder="pct_..." required></label>
      <button type="submit">Log in</button>
    </form>
    <p id="login-error" class="error" role="alert" data-testid="login-error"></p>
    <p class="hint">Make a token with <code>portcullis token add NAME --roles read-only</code>.</p>
  </section>
  <div id="dashboard" hidden>
    <section class="tiles">
      <div class="tile"><span class="label">Connections</span><span class="value" id="connections" data-testid="connections">–</span></div>
      <div class="tile"><span class="label">Sessions</span><span class="value" id="sessions" data-testid="sessions">–</span></div>
      <div class="tile"><span class="label">Subscriptions</span><span class="value" id="subscriptions">–</span></div>
      <div class="tile"><span class="label">Queued</span><span class="value" id="queued">–</span></div>
      <div class="tile"><span class="label">Retained</span><span class="value" id="retained">–</span></div>
      <div class="tile"><span class="label">Audit</span><span class="value" id="audit-state" data-testid="audit-state">–</span></div>
    </section>
    <section>
      <h2>Decision rates <small>per second, between the last two polls</small></h2>
      <table id="rates" data-testid="rates"><thead><tr><th>Decision</th><th>Allowed/s</th><th>Denied/s</th><th>Denied in total</th><th></th></tr></thead><tbody></tbody></table>
    </section>
    <section>
      <h2>Live connections</h2>
      <table id="clients" data-testid="clients"><thead><tr><th>Id</th><th>Client id</th><th>User</th><th>Listener</th><th>Protocol</th><th>Address</th><th>Since</th><th>Subs</th></tr></thead><tbody></tbody></table>
    </section>
    <section>
      <h2>Latest denials</h2>
      <table id="denials" data-testid="denials"><thead><tr><th>Time</th><th>Event</th><th>Code</th><th>Client id</th><th>User</th><th>Topic</th><th>Reason</th></tr></thead><tbody></tbody></table>
    </section>
    <section>
      <h2>Certificates near expiry</h2>
      <table id="certificates" data-testid="certificates"><thead><tr><th>What</th><th>Listener</th><th>Subject</th><th>Expires</th><th>Days left</th></tr></thead><tbody></tbody></table>
    </section>
    <section>
      <h2>Policy explain</h2>
      <form id="explain-form" data-testid="explain-form" autocomplete="off">
        <label>User <input name="user"></label>
        <label>Client id <input name="client"></label>
        <label>Roles <input name="roles" placeholder="comma-separated"></label>
        <label>Action <select name="action"><option>publish</option><option>subscribe</option><option>unsubscribe</option><option>deliver</option></select></label>
        <label>Topic <input name="topic" required></label>
        <label>QoS <select name="qos"><option>0</option><option>1</option><option>2</option></select></label>
        <label class="check"><input name="retain" type="checkbox"> retain</label>
        <button type="submit">Explain</button>
      </form>
      <pre id="explain-result" data-testid="explain-result"></pre>
    </section>
    <p id="error" class="error" role="alert" data-testid="error"></p>
  </div>
</main>
</body>
</html>
`;

export const CONSOLE_CSS = `
:root { --bg: #f6f7f9; --fg: #1c2430; --muted: #5b6675; --line: #d9dee5; --accent: #1f5fbf; --deny: #b3261e; --ok: #1b7f3b; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.2rem; background: var(--fg); color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; flex: 1; }
main { padding: 1rem 1.2rem; max-width: 1200px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1rem; margin-bottom: 1rem; }
h2 { font-size: 1rem; margin: 0 0 .6rem; }
h2 small { color: var(--muted); font-weight: normal; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: .6rem; background: none; border: none; padding: 0; }
.tile { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem; display: flex; flex-direction: column; }
.tile .label { color: var(--muted); font-size: .8rem; }
.tile .value { font-size: 1.6rem; font-weight: 600; color: var(--accent); }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: .7rem; background: var(--deny); border-radius: 2px; min-width: 1px; }
tr.deny td:first-child { border-left: 3px solid var(--deny); }
.error { color: var(--deny); }
.near { color: var(--deny); font-weight: 600; }
form { display: flex; flex-wrap: wrap; gap: .6rem; align-items: end; }
label { display: flex; flex-direction: column; font-size: .8rem; color: var(--muted); }
label.check { flex-direction: row; gap: .3rem; align-items: center; }
input, select, button { font: inherit; padding: .3rem .5rem; }
button { background: var(--accent); color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
pre { background: var(--bg); padding: .6rem; white-space: pre-wrap; }
.allow { color: var(--ok); font-weight: 600; }
.denied { color: var(--deny); font-weight: 600; }
.hint { color: var(--muted); }
`;

export const CONSOLE_JS = `'use strict';
(function () {
  var KEY = 'portcullis.token';
  var POLL_MS = 5000;
  var timer = null;
  var previous = null;
  var $ = function (id) { return document.getElementById(id); };

  function token() { return sessionStorage.getItem(KEY); }

  function api(path, options) {
    options = options || {};
    var headers = { Authorization: 'Bearer ' + token() };
    // Every request that is not a GET says it is JSON, body or not: the listener refuses others (415).
    if (options.body !== undefined || (options.method || 'GET') !== 'GET') headers['Content-Type'] = 'application/json';
    return fetch(path, { method: options.method || 'GET', headers: headers, body: options.body, cache: 'no-store' }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (data) {
        if (!res.ok) {
          var err = new Error((data && data.message) || ('HTTP ' + res.status));
          err.status = res.status;
          throw err;
        }
        return data;
      });
    });
  }

  function cell(row, text, cls) {
    var td = document.createElement('td');
    td.textContent = text === null || text === undefined ? '–' : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, rows, render) {
    var body = $(tableId).querySelector('tbody');
    body.replaceChildren();
    rows.forEach(function (r) { var tr = document.createElement('tr'); render(tr, r); body.appendChild(tr); });
    if (rows.length === 0) { var tr = document.createElement('tr'); var td = cell(tr, 'none'); td.colSpan = 9; body.appendChild(tr); }
  }

  function time(iso) { return iso ? iso.replace('T', ' ').replace(/\\.\\d+Z$/, 'Z') : '–'; }
  function hex(code) { return code === undefined ? '–' : '0x' + ('0' + code.toString(16)).slice(-2); }

  function showLogin(message) {
    stop();
    $('dashboard').hidden = true;
    $('login').hidden = false;
    $('logout').hidden = true;
    $('who').textContent = '';
    $('login-error').textContent = message || '';
  }

  function showDashboard(me) {
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('logout').hidden = false;
    $('who').textContent = me.name + ' (' + (me.roles.length ? me.roles.join(', ') : 'no roles') + ', ' + me.method + ')';
    previous = null;
    poll();
    stop();
    timer = setInterval(poll, POLL_MS);
  }

  function stop() { if (timer !== null) { clearInterval(timer); timer = null; } }

  function failed(err) {
    if (err.status === 401) { sessionStorage.removeItem(KEY); showLogin('Session ended: ' + err.message); return; }
    $('error').textContent = err.message;
  }

  function renderOverview(o) {
    var c = o.counts;
    $('connections').textContent = c.connections;
    $('sessions').textContent = c.sessions;
    $('subscriptions').textContent = c.subscriptions;
    $('queued').textContent = c.queued;
    $('retained').textContent = c.retained;
    $('audit-state').textContent = o.audit.ok ? 'healthy' : 'FAILING';
    var now = Date.parse(o.time);
    var rows = [];
    var seconds = previous ? Math.max(0.001, (now - previous.at) / 1000) : null;
    var rate = function (a, b) { return seconds === null ? null : ((a - b) / seconds).toFixed(1); };
    rows.push({ name: 'connect', allow: rate(o.totals.connectsAccepted, previous ? previous.totals.connectsAccepted : 0), deny: rate(o.totals.connectsRefused, previous ? previous.totals.connectsRefused : 0), denied: o.totals.connectsRefused });
    Object.keys(o.totals.decisions).forEach(function (k) {
      var d = o.totals.decisions[k];
      var p = previous ? previous.totals.decisions[k] : { allow: 0, deny: 0 };
      rows.push({ name: k, allow: rate(d.allow, p.allow), deny: rate(d.deny, p.deny), denied: d.deny });
    });
    rows.push({ name: 'tls', allow: null, deny: rate(o.totals.tlsRefused, previous ? previous.totals.tlsRefused : 0), denied: o.totals.tlsRefused });
    var most = rows.reduce(function (m, r) { return Math.max(m, r.denied); }, 1);
    fill('rates', rows, function (tr, r) {
      tr.dataset.decision = r.name;
      cell(tr, r.name);
      cell(tr, r.allow, 'num');
      cell(tr, r.deny, 'num');
      cell(tr, r.denied, 'num');
      var bar = document.createElement('div');
      bar.className = 'bar';
      bar.style.width = Math.round((r.denied / most) * 160) + 'px';
      var td = document.createElement('td');
      td.appendChild(bar);
      tr.appendChild(td);
    });
    previous = { at: now, totals: o.totals };
  }

  function renderClients(page) {
    fill('clients', page.items, function (tr, c) {
      tr.dataset.clientId = c.clientId;
      cell(tr, c.id, 'num'); cell(tr, c.clientId); cell(tr, c.username); cell(tr, c.listener);
      cell(tr, c.protocol); cell(tr, c.remoteAddress + ':' + c.remotePort); cell(tr, time(c.connectedAt)); cell(tr, c.subscriptions, 'num');
    });
  }

  function renderDenials(list) {
    fill('denials', list.items, function (tr, d) {
      tr.className = 'deny';
      cell(tr, time(d.time)); cell(tr, d.event + (d.action ? '/' + d.action : '')); cell(tr, hex(d.reasonCode));
      cell(tr, d.clientId); cell(tr, d.username); cell(tr, d.topic); cell(tr, d.reason);
    });
  }

  function renderCertificates(c) {
    var rows = c.files.filter(function (f) { return f.nearExpiry || f.error; }).map(function (f) {
      return { what: f.kind + (f.error ? ' (' + f.error + ')' : ''), listener: f.listener, subject: f.subject, expiresAt: f.expiresAt, daysLeft: f.daysLeft };
    }).concat(c.clients.map(function (x) {
      return { what: 'client ' + x.clientId, listener: x.authMethod, subject: x.certSubject || x.username, expiresAt: x.expiresAt, daysLeft: x.daysLeft };
    }));
    fill('certificates', rows, function (tr, r) {
      cell(tr, r.what); cell(tr, r.listener); cell(tr, r.subject); cell(tr, time(r.expiresAt)); cell(tr, r.daysLeft, 'num near');
    });
  }

  var certsAt = 0;
  function poll() {
    Promise.all([
      api('/api/v1/overview').then(renderOverview),
      api('/api/v1/clients?limit=100').then(renderClients),
      api('/api/v1/audit/denials?limit=20').then(renderDenials),
      Date.now() - certsAt > 30000 ? api('/api/v1/certificates').then(function (c) { certsAt = Date.now(); renderCertificates(c); }) : null,
    ]).then(function () { $('error').textContent = ''; document.body.dataset.loaded = 'true'; }, failed);
  }

  function login(value) {
    sessionStorage.setItem(KEY, value);
    api('/api/v1/whoami').then(showDashboard, function (err) {
      sessionStorage.removeItem(KEY);
      showLogin(err.status === 401 ? 'Login refused: ' + err.message : err.message);
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    $('login-form').addEventListener('submit', function (e) {
      e.preventDefault();
      var value = $('token').value.trim();
      $('token').value = '';
      login(value);
    });
    $('logout').addEventListener('click', function () { sessionStorage.removeItem(KEY); showLogin('Logged out.'); });
    $('explain-form').addEventListener('submit', function (e) {
      e.preventDefault();
      var f = e.target.elements;
      var body = { action: f.action.value, topic: f.topic.value, qos: Number(f.qos.value), retain: f.retain.checked,
        roles: f.roles.value.split(',').map(function (r) { return r.trim(); }).filter(Boolean) };
      if (f.user.value) body.user = f.user.value;
      if (f.client.value) body.client = f.client.value;
      api('/api/v1/policy/explain', { method: 'POST', body: JSON.stringify(body) }).then(function (r) {
        $('explain-result').textContent = r.results.map(function (x) {
          return x.decision.toUpperCase() + ' (' + x.authorizer + ')\\nrule: ' + (x.rule || '(none: default deny)') + '\\nwhy: ' + x.detail +
            x.nearMisses.map(function (m) { return '\\nnear miss: ' + m.rule + ': ' + m.why; }).join('') + '\\npolicy version: ' + x.policyVersion;
        }).join('\\n\\n');
      }, function (err) { $('explain-result').textContent = 'Error: ' + err.message; });
    });
    if (token()) login(token()); else showLogin('');
  });
})();
`;
