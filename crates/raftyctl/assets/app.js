// Rafty's dashboard: one EventSource on /events (a snapshot, then deltas), rendered into the
// tables of index.html. No framework, no build step; everything from the server is escaped.
'use strict';

const HISTORY_CAP = 10000;
// The snapshot brings the newest 200 of the history; "Show older" asks /api/history for 200 more.
// 10 000 rows at once would take seconds on a phone, and nobody reads them all.
const HISTORY_PAGE = 200;
const model = {
  drives: {}, jobs: {}, workers: {}, queues: [], dead: [], history: [], historyTotal: 0,
  actions: false, broker: null, offset: 0,
};
let rendered = false;

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, c => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}
function dur(secs) {
  if (secs == null || !isFinite(secs)) return '–';
  secs = Math.max(0, Math.round(secs));
  const h = Math.floor(secs / 3600), m = Math.floor(secs % 3600 / 60), s = secs % 60;
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
}
function size(bytes) {
  if (!bytes) return '–';
  const u = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (bytes >= 1000 && i < u.length - 1) { bytes /= 1000; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function pct(p) {
  if (p == null) return '–';
  const w = Math.max(0, Math.min(100, p));
  return `<progress max="100" value="${w.toFixed(1)}" aria-hidden="true"></progress> ${p.toFixed(1)} %`;
}
function now() { return Date.now() + model.offset; }
function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? esc(iso) : esc(d.toLocaleString());
}

function fill(id, rows) {
  const section = document.getElementById(id);
  section.querySelector('tbody').innerHTML = rows.join('');
  section.classList.toggle('has-rows', rows.length > 0);
}

function renderDrives() {
  fill('drives', Object.values(model.drives).map(d => `<tr>
    <td>${esc(d.host)}:${esc(d.device)}</td>
    <td class="${d.state === 'failed' ? 'bad' : d.state === 'done' ? 'ok' : ''}">${esc(d.state)}${d.error ? `: <span class="reason">${esc(d.error)}</span>` : ''}</td>
    <td class="num">${pct(d.percent)}</td>
    <td class="num">${d.rate != null ? (d.rate / 1e6).toFixed(1) + ' MB/s' : '–'}</td>
    <td class="num">${dur(d['eta-secs'])}</td>
    <td class="num ${d.unreadable ? 'bad' : ''}">${d.unreadable ?? 0}</td>
    <td class="${d['safe-to-remove'] ? 'ok' : 'warn'}">${d['safe-to-remove'] ? 'safe to remove' : 'in use'}</td></tr>`));
}
function renderQueues() {
  fill('queues', model.queues.map(q => `<tr><td>${esc(q.name)}</td>
    <td class="num ${q.name.endsWith('.dead') && q.messages ? 'bad' : ''}">${q.messages}</td>
    <td class="num">${q.consumers}</td></tr>`));
}
function renderJobs() {
  const t = now();
  fill('jobs', Object.values(model.jobs).sort((a, b) => a['started-ms'] - b['started-ms']).map(j => `<tr>
    <td>${esc(j.name || '(unnamed)')}<span class="id">${esc(j.id)}</span></td>
    <td class="num">${j.title ?? '–'}</td>
    <td>${esc(j.host)}</td>
    <td>${esc(j.stage)}</td>
    <td class="num">${pct(j.percent)}</td>
    <td class="num">${j.fps != null ? j.fps.toFixed(0) : '–'}</td>
    <td class="num">${dur(j['eta-secs'])}</td>
    <td class="num" data-since="${j['started-ms']}">${dur((t - j['started-ms']) / 1000)}</td></tr>`));
}
function actionButtons(kind, key) {
  if (!model.actions) return '<td class="act">–</td>';
  if (kind === 'worker') {
    return `<td class="act"><button type="button" data-act="drain" data-host="${esc(key)}">Drain</button>
      <button type="button" data-act="resume" data-host="${esc(key)}">Resume</button></td>`;
  }
  return `<td class="act"><button type="button" data-act="requeue" data-id="${esc(key)}">Requeue</button></td>`;
}
function renderWorkers() {
  const t = now();
  fill('workers', Object.values(model.workers).sort((a, b) => a.host.localeCompare(b.host) || a.pid - b.pid).map(w => `<tr>
    <td>${esc(w.host)}</td><td class="num">${w.pid}</td>
    <td class="${w.state === 'drained' || w.state === 'draining' ? 'warn' : ''}">${esc(w.state)}</td>
    <td class="num" data-since="${w['seen-ms']}" data-suffix=" ago">${dur((t - w['seen-ms']) / 1000)} ago</td>
    <td>${w['job-name'] ? esc(w['job-name']) : '–'}</td>
    ${actionButtons('worker', w.host)}</tr>`));
}
function renderDead() {
  fill('dead', model.dead.map(d => `<tr>
    <td>${esc(d.name || '')}<span class="id">${esc(d.id)}</span></td>
    <td>${d['failed-at'] ? when(d['failed-at']) : '–'}</td>
    <td class="num">${d.attempt ?? '–'}</td>
    <td>${esc(d.host || '–')}</td>
    <td>${esc(d.class || '–')}</td>
    <td class="reason">${esc(d.reason)}</td>
    ${actionButtons('dead', d.id)}</tr>`));
}
function historyRow(h) {
  const title = h.outputs.map(o => dur(o['title-secs'])).join(', ') || '–';
  const out = h.outputs.map(o => dur(o['duration-secs'])).join(', ') || '–';
  const cls = h.outcome === 'done' || h.outcome === 'skipped' ? 'ok' : h.outcome === 'dead-letter' ? 'bad' : 'warn';
  return `<tr><td class="num">${when(h.when)}</td>
    <td>${esc(h.name || h.id)}</td>
    <td class="${cls}">${esc(h.outcome)}${h.error ? `: <span class="reason">${esc(h.error)}</span>` : ''}</td>
    <td>${esc(h.host)}</td><td class="num">${title}</td><td class="num">${out}</td>
    <td class="num">${size(h.size)}</td><td class="num">${dur(h['elapsed-secs'])}</td></tr>`;
}
function historyFooter() {
  const more = document.getElementById('history-more');
  const left = model.historyTotal - model.history.length;
  more.hidden = left <= 0;
  more.textContent = `Show older (${left} more)`;
  document.getElementById('history-count').textContent =
    `(${model.historyTotal}${left > 0 ? `, newest ${model.history.length} shown` : ''})`;
  document.getElementById('history').classList.toggle('has-rows', model.history.length > 0);
}
function renderHistory() {
  const rows = [];
  for (let i = model.history.length - 1; i >= 0; i--) rows.push(historyRow(model.history[i]));
  fill('history', rows);
  historyFooter();
}
async function showOlder() {
  const more = document.getElementById('history-more');
  more.disabled = true;
  try {
    const r = await fetch(`api/history?skip=${model.history.length}&limit=${HISTORY_PAGE}`);
    const older = await r.json();
    model.history.unshift(...older.slice().reverse());
    document.querySelector('#history tbody').insertAdjacentHTML('beforeend', older.map(historyRow).join(''));
  } finally {
    more.disabled = false;
    historyFooter();
  }
}
function addHistory(entries) {
  model.history.push(...entries);
  model.historyTotal = Math.min(HISTORY_CAP, model.historyTotal + entries.length);
  const tbody = document.querySelector('#history tbody');
  tbody.insertAdjacentHTML('afterbegin', entries.slice().reverse().map(historyRow).join(''));
  while (model.history.length > HISTORY_CAP) {
    model.history.shift();
    tbody.lastElementChild?.remove();
  }
  historyFooter();
}
function renderBroker() {
  const b = model.broker, el = document.getElementById('broker');
  if (!b) return;
  el.textContent = b.connected ? `live: ${b.url}` : `broker unreachable (${b.url})${b.error ? ': ' + b.error : ''}`;
  el.classList.toggle('down', !b.connected);
  document.getElementById('actions').hidden = !model.actions;
}

function merge(target, changes) {
  for (const [k, v] of Object.entries(changes || {})) {
    if (v === null) delete target[k]; else target[k] = v;
  }
}

function onSnapshot(e) {
  const s = JSON.parse(e.data);
  model.offset = s['now-ms'] - Date.now();
  model.actions = s.actions; model.broker = s.broker;
  model.drives = s.drives; model.jobs = s.jobs; model.workers = s.workers;
  model.queues = s.queues; model.dead = s['dead-letters'];
  model.history = s.history; model.historyTotal = s['history-total'];
  renderBroker(); renderDrives(); renderQueues(); renderJobs(); renderWorkers(); renderDead(); renderHistory();
  if (!rendered) {
    rendered = true;
    // Style and layout done now, so the figure includes them (read by the benchmark).
    void document.body.offsetHeight;
    document.documentElement.dataset.firstRenderMs = performance.now().toFixed(1);
  }
}
function onDelta(e) {
  const d = JSON.parse(e.data);
  model.offset = d['now-ms'] - Date.now();
  if (d.drives) { merge(model.drives, d.drives); renderDrives(); }
  if (d.jobs) { merge(model.jobs, d.jobs); renderJobs(); }
  if (d.workers) { merge(model.workers, d.workers); renderWorkers(); }
  if (d.queues) { model.queues = d.queues; renderQueues(); }
  if (d['dead-letters']) { model.dead = d['dead-letters']; renderDead(); }
  if (d.history) addHistory(d.history);
  if (d.broker) { model.broker = d.broker; renderBroker(); }
}

async function act(button) {
  const token = document.getElementById('token').value;
  const result = document.getElementById('action-result');
  let url, what;
  if (button.dataset.act === 'requeue') {
    url = `api/dead-letters/${encodeURIComponent(button.dataset.id)}/requeue`;
    what = `requeue ${button.dataset.id}`;
  } else {
    url = `api/workers/${encodeURIComponent(button.dataset.host)}/${button.dataset.act}`;
    what = `${button.dataset.act} ${button.dataset.host}`;
  }
  button.disabled = true;
  try {
    const r = await fetch(url, { method: 'POST', headers: { 'X-Rafty-Token': token } });
    const body = await r.json().catch(() => ({}));
    result.textContent = r.ok ? `${what}: done` : `${what}: refused (${r.status}) ${body.error || ''}`;
    result.className = r.ok ? 'ok' : 'bad';
  } catch (err) {
    result.textContent = `${what}: ${err}`;
    result.className = 'bad';
  } finally {
    button.disabled = false;
  }
}

function start() {
  const token = document.getElementById('token');
  token.value = sessionStorage.getItem('rafty-token') || '';
  token.addEventListener('input', () => sessionStorage.setItem('rafty-token', token.value));
  document.getElementById('actions').addEventListener('submit', e => e.preventDefault());
  document.getElementById('history-more').addEventListener('click', showOlder);
  document.querySelector('main').addEventListener('click', e => {
    const b = e.target.closest('button[data-act]');
    if (b) act(b);
  });
  const es = new EventSource('events');
  es.addEventListener('snapshot', onSnapshot);
  es.addEventListener('delta', onDelta);
  es.onerror = () => {
    const el = document.getElementById('broker');
    el.textContent = 'dashboard unreachable: reconnecting…';
    el.classList.add('down');
  };
  // Ages and elapsed times move on between events (in place: a focused button stays focused).
  setInterval(() => {
    const t = now();
    for (const el of document.querySelectorAll('[data-since]')) {
      el.textContent = dur((t - Number(el.dataset.since)) / 1000) + (el.dataset.suffix || '');
    }
  }, 1000);
}
start();
