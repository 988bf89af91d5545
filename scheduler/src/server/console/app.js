// Roam's operator console: plain DOM, no framework, nothing fetched but
// from the scheduler that served it. Every value from the cluster is put
// on the page as text, never as HTML: names, labels and reasons come from
// operators and hosts.
'use strict';

const PATHS = {
  session: '/ui/session',
  nodes: '/v1/nodes',
  workloads: '/v1/workloads',
  migrations: '/v1/migrations',
  // The events kept first (the page shows the recent past), then live.
  events: '/v1/events?recent=true',
};
const PHASES = ['preparing', 'precopy', 'stopping', 'prepared', 'committed', 'done'];
const ENDS = new Set(['migration_done', 'migration_failed', 'migration_aborted', 'host_down', 'host_drained']);
const MAX_EVENTS = 200;
const MAX_TIMELINE = 60;

const state = {
  role: null,
  csrf: null,
  nodes: [],
  workloads: [],
  migrations: [],
  // What the page drew of each migration, in order: {phase, round}.
  timelines: new Map(),
  stream: null,
  refreshTimer: null,
  pollTimer: null,
};

function $(id) {
  return document.getElementById(id);
}

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'disabled' || k === 'hidden') e[k] = true;
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function path(...segments) {
  return '/' + segments.map(encodeURIComponent).join('/');
}

async function call(method, url, body, bearer) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (bearer) headers['authorization'] = 'Bearer ' + bearer;
  else if (method !== 'GET' && state.csrf) headers['x-roam-csrf'] = state.csrf;
  const r = await fetch(url, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!r.ok) {
    const message = (data && data.error) || text || r.statusText;
    const e = new Error(message);
    e.status = r.status;
    throw e;
  }
  return data;
}

function canAct() {
  return state.role === 'operator' || state.role === 'admin';
}

function bytes(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return (i === 0 ? v : v.toFixed(1)) + ' ' + units[i];
}

function ms(n) {
  if (n === undefined || n === null) return '';
  return n < 1000 ? n + ' ms' : (n / 1000).toFixed(2) + ' s';
}

function us(n) {
  if (n === undefined || n === null) return '';
  return n < 1000 ? n + ' µs' : (n / 1000).toFixed(2) + ' ms';
}

function notice(text, isError) {
  const n = $('notice');
  n.textContent = text || '';
  n.className = isError ? 'notice error' : 'notice';
}

// ---- signing in and out ----

async function start() {
  try {
    const who = await call('GET', PATHS.session);
    signedIn(who);
  } catch (_) {
    signedOut();
  }
}

function signedIn(who) {
  state.role = who.role;
  state.csrf = who.csrf || null;
  $('who').textContent = 'signed in as ' + who.role;
  $('sign-in').hidden = true;
  $('console').hidden = false;
  $('sign-out').hidden = false;
  refresh();
  follow();
  state.pollTimer = setInterval(refresh, 5000);
}

function signedOut() {
  state.role = null;
  state.csrf = null;
  if (state.stream) state.stream.close();
  state.stream = null;
  if (state.pollTimer) clearInterval(state.pollTimer);
  $('who').textContent = '';
  $('stream').textContent = '';
  $('console').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  $('sign-in-error').textContent = '';
  try {
    const who = await call('POST', PATHS.session, undefined, token);
    $('token').value = '';
    signedIn(who);
  } catch (e) {
    $('sign-in-error').textContent = 'Not signed in: ' + e.message;
  }
}

async function signOut() {
  try {
    await call('DELETE', PATHS.session);
  } finally {
    signedOut();
  }
}

// ---- the event stream ----

function follow() {
  if (state.stream) state.stream.close();
  const stream = new EventSource(PATHS.events, { withCredentials: true });
  state.stream = stream;
  stream.onopen = () => {
    $('stream').textContent = 'live';
    $('stream').className = 'stream live';
  };
  stream.onerror = () => {
    // EventSource reconnects by itself.
    $('stream').textContent = 'reconnecting';
    $('stream').className = 'stream down';
  };
  stream.onmessage = (m) => {
    let e;
    try {
      e = JSON.parse(m.data);
    } catch (_) {
      return;
    }
    addEvent(e);
    if (typeof e.type === 'string' && e.type.startsWith('migration_')) migrationEvent(e);
    refreshSoon();
    // What an end changes (placements, a host's instances) may land a
    // moment after its event, with the next heartbeat: read again then.
    if (ENDS.has(e.type)) setTimeout(refresh, 1500);
  };
}

function summary(e) {
  const skip = new Set(['type', 'time_ms']);
  return Object.entries(e)
    .filter(([k, v]) => !skip.has(k) && v !== null && v !== undefined && v !== '')
    .map(([k, v]) => k + '=' + (typeof v === 'object' ? JSON.stringify(v) : v))
    .join(' ');
}

function addEvent(e) {
  const list = $('events-list');
  const time = new Date(typeof e.time_ms === 'number' ? e.time_ms : Date.now()).toLocaleTimeString();
  const item = el(
    'li',
    { class: 'event', 'data-type': e.type || '' },
    el('time', {}, time),
    ' ',
    el('strong', {}, String(e.type || 'event')),
    ' ',
    summary(e),
  );
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// A migration's progress from the stream: drawn at once, each new phase
// or round added to its timeline.
function migrationEvent(e) {
  const id = e.migration;
  if (typeof id !== 'string') return;
  let m = state.migrations.find((x) => x.id === id);
  if (!m) {
    m = { id, workload: e.workload, source: e.source, target: e.target, phase: 'preparing', rounds: 0 };
    state.migrations.unshift(m);
  }
  const phase = e.type === 'migration_progress' ? e.phase : e.type.slice('migration_'.length);
  if (phase === 'started') {
    m.phase = 'preparing';
  } else if (typeof phase === 'string') {
    m.phase = phase;
  }
  if (typeof e.round === 'number') m.rounds = e.round;
  if (typeof e.rounds === 'number') m.rounds = e.rounds;
  if (typeof e.bytes === 'number') m.bytes_sent = e.bytes;
  if (typeof e.dirty_rate === 'number') m.dirty_rate = e.dirty_rate;
  if (typeof e.total_ms === 'number') m.total_ms = e.total_ms;
  if (typeof e.downtime_us === 'number') m.downtime_us = e.downtime_us;
  if (typeof e.error === 'string') m.error = e.error;
  if (e.type === 'migration_done') {
    notice(m.workload + ' moved to ' + m.target + ' (downtime ' + us(m.downtime_us) + ')');
  } else if (e.type === 'migration_failed' || e.type === 'migration_aborted') {
    notice(m.workload + ' did not move: ' + (m.error || m.phase), true);
  }
  note(m);
  drawMigrations();
}

// Add the migration's phase and round to its timeline if it is new.
function note(m) {
  let t = state.timelines.get(m.id);
  if (!t) {
    t = [];
    state.timelines.set(m.id, t);
  }
  const last = t[t.length - 1];
  if (!last || last.phase !== m.phase || last.round !== (m.rounds || 0)) {
    t.push({ phase: m.phase, round: m.rounds || 0 });
    if (t.length > MAX_TIMELINE) t.splice(1, 1);
  }
}

// ---- reading the cluster ----

function refreshSoon() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, 250);
}

async function refresh() {
  if (!state.role) return;
  try {
    const [nodes, workloads, migrations] = await Promise.all([
      call('GET', PATHS.nodes),
      call('GET', PATHS.workloads),
      call('GET', PATHS.migrations),
    ]);
    state.nodes = Array.isArray(nodes) ? nodes : [];
    state.workloads = Array.isArray(workloads) ? workloads : [];
    state.migrations = Array.isArray(migrations) ? migrations : [];
    for (const m of state.migrations) note(m);
    drawSites();
    drawWorkloads();
    drawMigrations();
  } catch (e) {
    if (e.status === 401) signedOut();
    else notice('Could not read the cluster: ' + e.message, true);
  }
}

// ---- sites and hosts ----

function drawSites() {
  const groups = new Map();
  for (const n of state.nodes) {
    const l = n.labels || {};
    const key = [l.jurisdiction || '—', l.provider || '—', l.site || '—'].join('\u0000');
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(n);
  }
  const keys = [...groups.keys()].sort();
  const body = $('sites-body');
  body.replaceChildren(
    ...keys.map((key) => {
      const [jurisdiction, provider, site] = key.split('\u0000');
      const hosts = groups.get(key).sort((a, b) => a.name.localeCompare(b.name));
      return el(
        'article',
        { class: 'site', 'data-site': site, 'data-jurisdiction': jurisdiction },
        el('h3', {}, site, ' ', el('small', {}, jurisdiction + ' · ' + provider)),
        el(
          'table',
          {},
          el(
            'thead',
            {},
            el('tr', {}, ['Host', 'Status', 'Arch', 'Engine', 'Memory', 'Slots', 'Instances', ''].map((h) => el('th', {}, h))),
          ),
          el('tbody', {}, hosts.map(hostRow)),
        ),
      );
    }),
  );
}

function hostRow(n) {
  const cap = n.capacity || {};
  const instances = n.instances || [];
  const actions = [];
  if (canAct()) {
    if (n.status === 'cordoned') {
      actions.push(el('button', { type: 'button', 'data-action': 'uncordon', 'data-host': n.name }, 'Uncordon'));
    } else {
      actions.push(el('button', { type: 'button', 'data-action': 'cordon', 'data-host': n.name }, 'Cordon'));
    }
    actions.push(el('button', { type: 'button', 'data-action': 'drain', 'data-host': n.name }, 'Drain'));
  }
  return el(
    'tr',
    { class: 'host', 'data-host': n.name, 'data-status': n.status },
    el('td', {}, n.name),
    el('td', {}, el('span', { class: 'status ' + n.status }, n.status)),
    el('td', {}, n.arch || ''),
    el('td', { title: n.engine || '' }, (n.labels && n.labels.engine) || ''),
    el('td', {}, bytes(n.memory_used) + ' / ' + bytes(cap.memory)),
    el('td', {}, instances.length + ' / ' + (cap.slots ?? '')),
    el('td', { class: 'instances' }, instances.join(', ')),
    el('td', {}, actions),
  );
}

async function nodeAction(action, host) {
  notice(action + ' ' + host + '…');
  try {
    await call('POST', path('v1', 'nodes', host, action), {});
    notice(action + ' ' + host + ': done');
  } catch (e) {
    notice(action + ' ' + host + ' refused: ' + e.message, true);
  }
  refresh();
}

// ---- workloads ----

function drawWorkloads() {
  const rows = state.workloads
    .slice()
    .sort((a, b) => a.spec.name.localeCompare(b.spec.name))
    .map((w) => {
      const s = w.spec;
      const rules = [s.selector || 'any host', s.spread_by ? 'spread by ' + s.spread_by : null]
        .filter(Boolean)
        .join('; ');
      const runsOn = (w.hosts || []).map((h) => {
        const p = (w.protection || {})[h];
        const extra = p
          ? ' (standby ' + (p.standby || 'none') + (p.checkpoint_age_ms !== undefined ? ', checkpoint ' + ms(p.checkpoint_age_ms) + ' ago' : '') + ')'
          : '';
        const buttons = canAct()
          ? el('button', { type: 'button', 'data-action': 'migrate', 'data-workload': s.name, 'data-host': h }, 'Migrate')
          : null;
        return el('div', { class: 'placement', 'data-host': h }, h + extra, ' ', buttons);
      });
      const refused = Object.entries(w.rejected || {}).map(([h, why]) => el('div', {}, h + ': ' + why));
      return el(
        'tr',
        { class: 'workload', 'data-workload': s.name },
        el('td', {}, s.name),
        el('td', {}, rules),
        el('td', {}, String((w.hosts || []).length) + ' / ' + s.replicas),
        el('td', { class: 'generation' }, String(w.generation ?? 0)),
        el('td', {}, runsOn),
        el('td', { class: 'digest', title: s.digest }, (s.digest || '').slice(0, 19)),
        el('td', {}, s.durability || 'none'),
        el('td', { class: 'refused' }, refused),
      );
    });
  $('workloads-body').replaceChildren(...rows);
}

// ---- migrating ----

function openMigrate(workload, source) {
  const w = state.workloads.find((x) => x.spec.name === workload);
  if (!w) return;
  $('migrate-workload').textContent = workload;
  $('migrate-source').textContent = source;
  $('migrate-error').textContent = '';
  const go = $('migrate-go');
  go.disabled = true;
  go.dataset.workload = workload;
  go.dataset.source = source;
  delete go.dataset.target;
  const list = $('migrate-targets');
  const rejected = w.rejected || {};
  list.replaceChildren(
    ...state.nodes
      .slice()
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => {
        let why = null;
        if (n.name === source) why = 'it runs there now';
        else if ((w.hosts || []).includes(n.name)) why = 'another replica runs there';
        else if (rejected[n.name]) why = rejected[n.name];
        else if (n.status !== 'ready') why = 'the host is ' + n.status;
        const input = el('input', {
          type: 'radio',
          name: 'target',
          value: n.name,
          id: 'target-' + n.name,
          disabled: why !== null,
        });
        input.addEventListener('change', () => {
          go.dataset.target = n.name;
          go.disabled = false;
        });
        return el(
          'li',
          { class: why ? 'target refused' : 'target', 'data-host': n.name },
          el('label', { for: 'target-' + n.name }, input, ' ', n.name, ' ', el('small', {}, (n.labels || {}).site || '')),
          why ? el('span', { class: 'why' }, ' — ' + why) : null,
        );
      }),
  );
  $('migrate-dialog').showModal();
}

async function migrate() {
  const go = $('migrate-go');
  const { workload, source, target } = go.dataset;
  if (!target) return;
  go.disabled = true;
  try {
    const m = await call('POST', PATHS.migrations, { workload, from: source, to: target });
    $('migrate-dialog').close();
    if (m && m.id) {
      if (!state.migrations.some((x) => x.id === m.id)) state.migrations.unshift(m);
      note(m);
      drawMigrations();
    }
    notice('migrating ' + workload + ' to ' + target);
  } catch (e) {
    $('migrate-error').textContent = 'Refused: ' + e.message;
    go.disabled = false;
  }
}

function drawMigrations() {
  const rows = state.migrations.map((m) => {
    const done = PHASES.indexOf(m.phase);
    const progress = m.phase === 'failed' || m.phase === 'aborted' ? 0 : Math.max(0, done) / (PHASES.length - 1);
    const bar = el('progress', { max: '100', value: String(Math.round(progress * 100)) });
    const timeline = (state.timelines.get(m.id) || []).map((t) =>
      el('li', { 'data-phase': t.phase, 'data-round': String(t.round) }, t.phase + (t.phase === 'precopy' || t.phase === 'stopping' ? ' ' + t.round : '')),
    );
    return el(
      'tr',
      { class: 'migration', 'data-migration': m.id, 'data-phase': m.phase },
      el('td', {}, m.id),
      el('td', {}, m.workload || ''),
      el('td', {}, (m.source || '') + ' → ' + (m.target || '')),
      el('td', { class: 'phase' }, el('span', { class: 'phase ' + m.phase }, m.phase), m.error ? el('div', { class: 'error' }, m.error) : null),
      el('td', {}, bar),
      el('td', { class: 'round' }, String(m.rounds ?? '')),
      el('td', {}, bytes(m.bytes_sent)),
      el('td', {}, m.dirty_rate ? bytes(Math.round(m.dirty_rate)) + '/s' : ''),
      el('td', {}, ms(m.total_ms)),
      el('td', { class: 'downtime' }, us(m.downtime_us)),
      el('td', {}, el('ol', { class: 'timeline' }, timeline)),
    );
  });
  $('migrations-body').replaceChildren(...rows);
  drawChart();
}

function drawChart() {
  const done = state.migrations.filter((m) => m.phase === 'done' && typeof m.downtime_us === 'number').slice(0, 30).reverse();
  const chart = $('downtime-chart');
  if (done.length === 0) {
    chart.replaceChildren(el('p', { class: 'muted' }, 'No finished migration yet.'));
    return;
  }
  const width = 600;
  const height = 120;
  const most = Math.max(...done.map((m) => m.downtime_us), 1);
  const step = Math.min(40, width / done.length);
  const s = svg('svg', { viewBox: '0 0 ' + width + ' ' + (height + 20), class: 'chart', role: 'img' });
  done.forEach((m, i) => {
    const h = Math.max(1, (m.downtime_us / most) * height);
    const bar = svg('rect', { x: i * step + 2, y: height - h, width: Math.max(1, step - 4), height: h, class: 'bar' });
    const title = svg('title', {});
    title.textContent = m.workload + ' ' + m.id + ': ' + us(m.downtime_us);
    bar.append(title);
    s.append(bar);
  });
  const label = svg('text', { x: 0, y: height + 16, class: 'axis' });
  label.textContent = 'highest ' + us(most);
  s.append(label);
  chart.replaceChildren(s);
}

// ---- wiring ----

document.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('migrate-go').addEventListener('click', migrate);
  $('migrate-cancel').addEventListener('click', () => $('migrate-dialog').close());
  document.body.addEventListener('click', (event) => {
    const b = event.target.closest('button[data-action]');
    if (!b) return;
    const action = b.dataset.action;
    if (action === 'migrate') openMigrate(b.dataset.workload, b.dataset.host);
    else if (action === 'cordon' || action === 'uncordon' || action === 'drain') nodeAction(action, b.dataset.host);
  });
  start();
});
