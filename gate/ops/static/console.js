// callgate console: a client of the /v1 API, hand-written (no framework, no build step).
// What is committed is what the browser runs. It renders data with textContent only
// (never innerHTML), so nothing the trail or a list holds can become markup.
(() => {
  'use strict';

  // Country calling codes (phonenumbers' COUNTRY_CODE_TO_REGION_CODE; a test keeps the two
  // equal): to split +33612345678 into +33 and 612345678 when masking.
  const CALLING_CODES = new Set([
    1, 7, 20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53,
    54, 55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
    211, 212, 213, 216, 218, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232,
    233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250,
    251, 252, 253, 254, 255, 256, 257, 258, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269,
    290, 291, 297, 298, 299, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 370, 371, 372,
    373, 374, 375, 376, 377, 378, 380, 381, 382, 383, 385, 386, 387, 389, 420, 421, 423, 500,
    501, 502, 503, 504, 505, 506, 507, 508, 509, 590, 591, 592, 593, 594, 595, 596, 597, 598,
    599, 670, 672, 673, 674, 675, 676, 677, 678, 679, 680, 681, 682, 683, 685, 686, 687, 688,
    689, 690, 691, 692, 800, 808, 850, 852, 853, 855, 856, 870, 878, 880, 881, 882, 883, 886,
    888, 960, 961, 962, 963, 964, 965, 966, 967, 968, 970, 971, 972, 973, 974, 975, 976, 977,
    979, 992, 993, 994, 995, 996, 998,
  ]);
  const DOT = '\u2022';
  const VERDICT_COLORS = { ALLOW: '#1a7f37', BLOCK: '#cf222e', DEFER: '#9a6700' };
  const PALETTE = ['#cf222e', '#9a6700', '#8250df', '#0969da', '#bc4c00', '#1b7c83', '#bf3989', '#57606a'];
  const LIVE_POLL_MS = 5000;
  const LIVE_ROWS = 100;

  const state = { session: null, cleanup: [] };

  // --- small helpers ---------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') el.textContent = value;
      else if (key === 'class') el.className = value;
      else if (key === 'style') {
        // Through the CSSOM: the Content-Security-Policy refuses style attributes.
        for (const rule of value.split(';')) {
          const at = rule.indexOf(':');
          if (at > 0) el.style.setProperty(rule.slice(0, at).trim(), rule.slice(at + 1).trim());
        }
      }
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const main = () => document.getElementById('main');
  const fmt = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

  function group(digits, sizes) {
    const out = [];
    let at = 0;
    for (const size of sizes) {
      if (at >= digits.length) break;
      out.push(digits.slice(at, at + size));
      at += size;
    }
    if (at < digits.length) out.push(digits.slice(at));
    return out.join(' ');
  }

  // +33612345678 → "+33 6 12 •• •• 78": the country code, the first three and the last
  // two digits of the national number; the rest hidden.
  function mask(e164, reveal) {
    if (!/^\+\d{4,15}$/.test(e164)) return e164;
    const digits = e164.slice(1);
    let cc = digits.slice(0, 1);
    for (const len of [1, 2, 3]) {
      if (CALLING_CODES.has(Number(digits.slice(0, len)))) { cc = digits.slice(0, len); break; }
    }
    const national = digits.slice(cc.length);
    const shown = reveal ? national : [...national]
      .map((d, i) => (i < 3 || i >= national.length - 2 ? d : DOT)).join('');
    const sizes = cc === '1' && national.length === 10 ? [3, 3, 4]
      : [national.length % 2 ? 1 : 2, 2, 2, 2, 2, 2, 2];
    return `+${cc} ${group(shown, sizes)}`;
  }

  // A number of the audit trail: its keyed hash (tag), an E.164 number (masked), or a
  // short code.
  function trailNumber(value) {
    if (!value) return '—';
    if (/^[0-9a-f]{16}$/.test(value)) return `#${value.slice(0, 8)}`;
    return value.startsWith('+') ? mask(value, false) : value;
  }

  // The tooltip of a trail's number cell: a keyed hash in full (the cell shows its first
  // 8 digits), never a number (the cell masks it).
  function tagTitle(value) {
    return value && /^[0-9a-f]{16}$/.test(value) ? value : null;
  }

  function maskText(text, reveal) {
    return reveal ? text : text.replace(/\+\d{6,15}/g, (m) => mask(m, false));
  }

  function pad(n) { return String(n).padStart(2, '0'); }

  // <input type=datetime-local> value → RFC 3339 with the browser's own offset.
  function instant(value) {
    if (!value) return null;
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) return null;
    const off = -d.getTimezoneOffset();
    const sign = off >= 0 ? '+' : '-';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:`
      + `${pad(d.getMinutes())}:${pad(d.getSeconds())}${sign}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  }

  function localInput(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function when(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return 'never';
    if (seconds < 120) return `${seconds} s ago`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} days ago`;
  }

  function duration(seconds) {
    if (seconds % 86400 === 0) return `${seconds / 86400}d`;
    if (seconds % 3600 === 0) return `${seconds / 3600}h`;
    return `${seconds}s`;
  }

  function uploadType(file) {
    const name = file.name.toLowerCase();
    if (name.endsWith('.gz')) return 'application/gzip';
    if (name.endsWith('.zip')) return 'application/zip';
    if (name.endsWith('.tsv')) return 'text/tab-separated-values';
    return 'text/csv';
  }

  // --- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function request(method, path, { json, body, type } = {}) {
    const headers = {};
    if (method !== 'GET' && state.session && state.session.csrf) headers['X-CSRF-Token'] = state.session.csrf;
    if (json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
    if (type) headers['Content-Type'] = type;
    const response = await fetch(path, { method, headers, body, credentials: 'same-origin' });
    if (response.status === 401 && path !== '/v1/session') {
      signedOut('Your session has ended: sign in again.');
      throw new ApiError(401, 'signed out');
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  const getJson = async (path) => (await request('GET', path)).json();
  const postJson = async (path, json) => (await request('POST', path, { json })).json();

  // An NDJSON answer, one event at a time, as it arrives.
  async function events(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (line) onEvent(JSON.parse(line));
      }
      if (done) break;
    }
    if (buffer.trim()) onEvent(JSON.parse(buffer));
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
    const text = q.toString();
    return text ? `?${text}` : '';
  }

  // --- sign-in and the frame -------------------------------------------------------------

  function stopPage() {
    for (const stop of state.cleanup.splice(0)) stop();
  }

  function signedOut(message) {
    stopPage();
    if (state.session && !state.session.token_required) {
      // No token configured: a new session needs none (an expired one is simply renewed).
      state.session = null;
      signIn('').then(started).catch((e) => signedOut(e.message));
      return;
    }
    state.session = null;
    document.getElementById('nav').hidden = true;
    document.getElementById('who').replaceChildren();
    const root = main();
    root.replaceChildren(signinSection());
    document.getElementById('signin').hidden = false;
    document.getElementById('signin-error').textContent = message || '';
    document.getElementById('token').focus();
  }

  let signin = null;
  function signinSection() {
    if (!signin) signin = document.getElementById('signin');
    return signin;
  }

  async function signIn(token) {
    const response = await fetch('/v1/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
      credentials: 'same-origin',
    });
    const body = await response.json();
    if (!response.ok) throw new ApiError(response.status, body.error || 'sign-in refused');
    return body;
  }

  function started(session) {
    state.session = session;
    document.getElementById('signin').hidden = true;
    document.getElementById('nav').hidden = false;
    const who = document.getElementById('who');
    who.replaceChildren(
      h('span', { text: `config ${session.config_version || '—'}` }),
      h('span', { text: `session ${session.session}` }),
      h('button', { type: 'button', id: 'signout', onclick: signOut, text: 'Sign out' }),
    );
    const banner = document.getElementById('banner');
    banner.hidden = session.token_required;
    banner.textContent = session.token_required ? ''
      : 'This gate has no API token: any local user can use this console and the API. Set [api] token to require one.';
    if (!location.hash || location.hash === '#/' || location.hash === '#') location.hash = '#/live';
    else route();
  }

  async function signOut() {
    try { await request('DELETE', '/v1/session'); } catch (e) { /* ends anyway */ }
    signedOut('Signed out.');
  }

  async function boot() {
    const root = main();
    document.getElementById('loading').remove();
    signinSection();
    document.getElementById('signin-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const error = document.getElementById('signin-error');
      error.textContent = '';
      try {
        started(await signIn(document.getElementById('token').value));
        document.getElementById('token').value = '';
      } catch (e) {
        error.textContent = e.message;
      }
    });
    const current = await (await fetch('/v1/session', { credentials: 'same-origin' })).json();
    if (current.signed_in) return started(current);
    if (!current.token_required) return started(await signIn(''));
    root.replaceChildren(signinSection());
    signedOut('');
  }

  // --- router ----------------------------------------------------------------------------

  const pages = {};

  function route() {
    if (!state.session) return;
    stopPage();
    // Only a page of our own: `#/constructor` or `#/__proto__` would otherwise pick an
    // inherited property of the object (not a page: a TypeError, no page shown).
    let name = (location.hash.replace(/^#\//, '') || 'live').split('?')[0];
    if (!Object.hasOwn(pages, name)) name = 'live';
    const page = pages[name];
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('on', a.dataset.page === name);
    const root = main();
    root.replaceChildren();
    page(root).catch((e) => {
      if (e.status !== 401) root.append(h('p', { class: 'error', text: e.message }));
    });
  }
  window.addEventListener('hashchange', route);

  function tenantSelect(name = 'tenant') {
    const s = state.session;
    return h('select', { name }, s.tenants.map((t) => h('option', { value: t, selected: t === s.default_tenant, text: t })));
  }

  function field(label, input) { return h('label', {}, label, input); }

  function formValues(form) {
    const out = {};
    for (const [k, v] of new FormData(form).entries()) out[k] = typeof v === 'string' ? v.trim() : v;
    return out;
  }

  function verdictSpan(verdict) { return h('span', { class: `verdict v-${verdict}`, text: verdict || '—' }); }

  // --- charts (SVG) ----------------------------------------------------------------------

  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(value));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
    return 10 * p;
  }

  // One line per series over the last hour, or since the gate started if that is more
  // recent (at least the last 5 minutes); x: minutes ago. count: the values sampled so
  // far (a chart may have no series at all: no refusals).
  function lineChart(series, colors, startIso, stepS, count) {
    const W = 600; const H = 180; const L = 40; const B = 20; const T = 8;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
    const names = Object.keys(series);
    const max = niceMax(Math.max(0, ...names.flatMap((n) => series[n])));
    const spanMin = Math.min(60, Math.max(5, Math.ceil((count * stepS) / 300) * 5));
    const span = spanMin * 60;
    const x = (i) => L + ((W - L - 4) * (span - (count - 1 - i) * stepS)) / span;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    for (const frac of [0, 0.5, 1]) {
      svg.append(s('line', { class: 'axis', x1: L, x2: W - 4, y1: y(max * frac), y2: y(max * frac) }));
      svg.append(s('text', { x: L - 4, y: y(max * frac) + 3, 'text-anchor': 'end' }, `${+(max * frac).toFixed(2)}/s`));
    }
    for (const part of [4, 3, 2, 1, 0]) {
      const minutes = Math.round((spanMin * part) / 4);
      const px = L + ((W - L - 4) * (span - minutes * 60)) / span;
      svg.append(s('text', { x: px, y: H - 5, 'text-anchor': part === 0 ? 'end' : part === 4 ? 'start' : 'middle' }, minutes ? `-${minutes} min` : 'now'));
    }
    if (!count) {
      svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'collecting: the first values appear within a minute'));
    }
    names.forEach((name, index) => {
      const values = series[name];
      if (!values.length) return;
      const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      svg.append(s('polyline', { points, stroke: colors[name] || PALETTE[index % PALETTE.length] }));
    });
    return svg;
  }

  function legend(names, colors) {
    return h('div', { class: 'legend' }, names.map((n, i) => h('span', {}, h('i', { style: `background:${colors[n] || PALETTE[i % PALETTE.length]}` }), n)));
  }

  // --- Live ------------------------------------------------------------------------------

  function card(label, value, sub, cls) {
    return h('div', { class: `card ${cls || ''}` }, h('div', { class: 'label', text: label }), h('div', { class: 'value', text: value }), h('div', { class: 'sub', text: sub || '' }));
  }

  function doorCards(d) {
    const redisSub = d.redis_error ? d.redis_error
      : `decisions: ${d.redis_decision_ms === null ? '—' : `${d.redis_decision_ms} ms`} mean, last minute`;
    return [
      card('FastAGI door', d.agi ? 'serving' : 'not served', `${fmt(d.agi_active)} active · ${fmt(d.agi_connections)} connections · ${fmt(d.agi_failed)} failed answers`, d.agi ? 'good' : ''),
      card('Stasis (ARI)', d.stasis === null ? 'not configured' : d.stasis ? 'connected' : 'NOT connected',
        d.stasis === null ? 'no [ari] in the config' : `${fmt(d.stasis_reconnects)} reconnects`, d.stasis === null ? '' : d.stasis ? 'good' : 'bad'),
      card('Redis', d.redis ? `${d.redis_ping_ms} ms PING` : 'UNREACHABLE', redisSub, d.redis ? 'good' : 'bad'),
      card('Fail-mode answers', fmt(d.fail_mode_last_hour), `last hour · ${fmt(d.fail_mode_total)} since start`, d.fail_mode_last_hour ? 'bad' : ''),
    ];
  }

  pages.live = async (root) => {
    const cards = h('div', { class: 'cards', id: 'doors' });
    const byVerdict = h('div', { id: 'chart-verdicts' });
    const byReason = h('div', { id: 'chart-reasons' });
    const rows = h('tbody', { id: 'live-rows' });
    root.append(
      h('h1', { text: 'Live' }),
      cards,
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', { text: 'Decisions per second by verdict, last hour' }), byVerdict),
        h('div', { class: 'panel' }, h('h2', { text: 'Refusals per second by reason, last hour' }), byReason)),
      h('h2', {}, 'Last decisions ', h('span', { class: 'hint', id: 'live-status', text: 'connecting…' })),
      h('div', { class: 'scroll' }, h('table', { id: 'live-table' },
        h('thead', {}, h('tr', {}, ['Time', 'Door', 'Verdict', 'Reason', 'Number', 'Tenant', 'Campaign'].map((t) => h('th', { text: t })))),
        rows)),
    );
    let firstData = true;
    const refresh = async () => {
      const live = await getJson('/v1/live');
      cards.replaceChildren(...doorCards(live.doors));
      const sr = live.series;
      const count = Math.max(0, ...Object.values(sr.verdicts).map((values) => values.length));
      byVerdict.replaceChildren(lineChart(sr.verdicts, VERDICT_COLORS, sr.start, sr.step_s, count), legend(Object.keys(sr.verdicts), VERDICT_COLORS));
      const reasons = Object.keys(sr.reasons);
      byReason.replaceChildren(lineChart(sr.reasons, {}, sr.start, sr.step_s, count),
        reasons.length ? legend(reasons, {}) : h('p', { class: 'hint', text: 'no refusals in the last hour' }));
      if (firstData) { firstData = false; performance.mark('callgate-live-data'); }
    };
    await refresh();
    const timer = setInterval(() => { refresh().catch(() => {}); }, LIVE_POLL_MS);
    const seen = new Set();
    const source = new EventSource('/v1/audit/follow');
    const status = document.getElementById('live-status');
    source.addEventListener('open', () => { status.textContent = 'streaming'; });
    source.addEventListener('error', () => { status.textContent = 'reconnecting…'; });
    // The feed cannot read Redis: the stream stays open and resumes once Redis answers.
    source.addEventListener('unavailable', (event) => { status.textContent = JSON.parse(event.data).error; });
    source.addEventListener('decision', (event) => {
      status.textContent = 'streaming';
      if (seen.has(event.lastEventId)) return;
      seen.add(event.lastEventId);
      const r = JSON.parse(event.data);
      const tr = h('tr', { 'data-id': r.id },
        h('td', { class: 'mono', text: when(r.time) }),
        h('td', { text: r.door }),
        h('td', {}, verdictSpan(r.verdict)),
        h('td', { class: 'mono', text: r.reason }),
        h('td', { class: 'num', title: tagTitle(r.number), text: trailNumber(r.number) }),
        h('td', { text: r.tenant }),
        h('td', { text: r.campaign }));
      rows.prepend(tr);
      while (rows.children.length > LIVE_ROWS) rows.lastElementChild.remove();
    });
    state.cleanup.push(() => clearInterval(timer), () => source.close());
  };

  // --- Check -----------------------------------------------------------------------------

  pages.check = async (root) => {
    const out = h('div', { id: 'check-result' });
    const form = h('form', { class: 'row', id: 'check-form' },
      field('Number', h('input', { name: 'number', required: true, placeholder: '06 12 34 56 78', autocomplete: 'off' })),
      field('Class', h('select', { name: 'class' }, h('option', { value: 'campaign', text: 'campaign (dialer)' }), h('option', { value: 'manual', text: 'manual (agent)' }))),
      field('Tenant', tenantSelect()),
      field('Campaign', h('input', { name: 'campaign', placeholder: 'optional' })),
      field('Caller ID', h('input', { name: 'caller_id', placeholder: 'optional' })),
      field('Time', h('input', { name: 'at', type: 'datetime-local', step: 1 })),
      h('button', { type: 'submit', class: 'primary', text: 'Check' }));
    root.append(h('h1', { text: 'Check a number' }),
      h('p', { class: 'hint', text: 'What the gate would decide now (or at the time given), rule by rule. Nothing is counted.' }),
      form, out);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const v = formValues(form);
      const body = { number: v.number, class: v.class, tenant: v.tenant, explain: true };
      if (v.campaign) body.campaign = v.campaign;
      if (v.caller_id) body.caller_id = v.caller_id;
      if (v.at) body.at = instant(v.at);
      out.replaceChildren(h('p', { class: 'hint', text: 'Checking…' }));
      try {
        showDecision(out, await postJson('/v1/check', body), false);
      } catch (e) {
        if (e.status !== 401) out.replaceChildren(h('p', { class: 'error', text: e.message }));
      }
    });
  };

  function showDecision(out, d, reveal) {
    const dest = d.destination ? mask(d.destination, reveal) : 'not a usable number';
    const toggle = d.destination && d.destination.startsWith('+')
      ? h('button', { type: 'button', class: 'link', id: 'reveal', text: reveal ? 'hide' : 'reveal', onclick: () => showDecision(out, d, !reveal) })
      : null;
    out.replaceChildren(
      h('div', { class: 'result' },
        h('span', { class: `verdict v-${d.verdict}`, id: 'verdict', text: d.verdict }),
        h('span', { class: 'reason mono', id: 'reason', text: d.reason }),
        d.retry_after_s !== null ? h('span', { class: 'hint', text: `retry after ${fmt(d.retry_after_s)} s` }) : null,
        h('span', { class: 'num', id: 'destination', text: dest }), toggle,
        d.shadow.length ? h('span', { class: 'badge warn', text: `shadow: ${d.shadow.join(', ')}` }) : null),
      h('table', { id: 'explain' },
        h('thead', {}, h('tr', {}, ['Rule', 'Outcome', 'Detail', 'Legal source'].map((t) => h('th', { text: t })))),
        h('tbody', {}, (d.rules || []).map((r) => h('tr', {},
          h('td', { class: 'mono', text: r.rule }),
          h('td', { class: /BLOCK|DEFER/.test(r.outcome) ? 'verdict v-BLOCK' : '', text: r.outcome }),
          h('td', { text: maskText(r.detail, reveal) }),
          h('td', { class: 'hint', text: r.source }))))),
      h('p', { class: 'hint', text: `config ${d.config_version}` }));
  }

  // --- Lists -----------------------------------------------------------------------------

  pages.lists = async (root) => {
    const scope = h('form', { class: 'row', id: 'lists-scope' },
      field('Tenant', tenantSelect()), field('Campaign', h('input', { name: 'campaign', placeholder: 'for per-campaign lists' })),
      h('button', { type: 'submit', text: 'Show' }));
    const table = h('div', { id: 'lists-table' });
    root.append(h('h1', { text: 'Lists' }), scope, table);
    let lists = [];
    const scopeValues = () => formValues(scope);
    const load = async () => {
      const v = scopeValues();
      const data = await getJson(`/v1/lists${query({ tenant: v.tenant, campaign: v.campaign })}`);
      lists = data.lists;
      table.replaceChildren(h('table', {},
        h('thead', {}, h('tr', {}, ['List', 'Kind', 'Scope', 'Entries', 'Last refresh', 'Imported', 'Freshness'].map((t) => h('th', { text: t })))),
        h('tbody', {}, lists.flatMap((l) => [h('tr', { class: l.stale ? 'stale' : '', 'data-list': l.name },
          h('td', { class: 'mono', text: l.name }),
          h('td', { text: l.kind }),
          h('td', { text: l.scope }),
          h('td', { class: 'entries', text: l.info ? fmt(l.info.entries) : '—' }),
          h('td', { text: l.info ? (l.info.refreshed_at ? `${when(l.info.refreshed_at)} (${age(l.age_s)})` : 'never') : '—' }),
          h('td', { text: l.info && l.info.imported_at ? when(l.info.imported_at) : '—' }),
          h('td', { class: 'fresh' }, l.note ? h('span', { class: 'hint', text: l.note })
            : l.freshness.length ? l.freshness.map((f) => h('div', {},
              `${f.rule}: within ${duration(f.max_age_s)} `,
              !f.in_force ? h('span', { class: 'badge', text: 'not in force' })
                : f.stale ? h('span', { class: 'badge red', text: 'STALE' }) : h('span', { class: 'badge', text: 'fresh' }),
              f.shadow ? h('span', { class: 'badge warn', text: 'shadow' }) : null))
              : h('span', { class: 'hint', text: 'no freshness rule' }))),
          // An import's switch unfinished: the figures above are partly the previous import's.
          l.info && l.info.unfinished_switch ? h('tr', { class: 'switch', 'data-switch': l.name },
            h('td', { colspan: 7 }, h('span', { class: 'badge warn', text: 'switch unfinished' }),
              h('span', { class: 'note', text: l.info.unfinished_switch.note }))) : null]))));
      fillListSelects();
    };
    scope.addEventListener('submit', (e) => { e.preventDefault(); load().catch(showError(table)); });

    // One number.
    const oneList = h('select', { name: 'list' });
    const oneMsg = h('p', { id: 'one-result' });
    const one = h('form', { class: 'row', id: 'one-form' },
      field('List', oneList), field('Number', h('input', { name: 'number', required: true, autocomplete: 'off' })),
      h('button', { type: 'submit', name: 'op', value: 'add', class: 'primary', text: 'Add' }),
      h('button', { type: 'submit', name: 'op', value: 'remove', text: 'Remove' }));
    one.addEventListener('submit', async (event) => {
      event.preventDefault();
      const op = event.submitter ? event.submitter.value : 'add';
      const v = { ...formValues(one), ...scopeValues() };
      const body = { numbers: [v.number], tenant: v.tenant };
      if (v.campaign) body.campaign = v.campaign;
      try {
        const r = await postJson(`/v1/lists/${encodeURIComponent(v.list)}/${op}`, body);
        oneMsg.className = 'ok';
        oneMsg.textContent = op === 'add' ? `${r.added} added, ${r.already_listed} already listed` : `${r.removed} removed, ${r.not_listed} not listed`;
        await load();
      } catch (e) { oneMsg.className = 'error'; oneMsg.textContent = e.message; }
    });

    // A file.
    const importList = h('select', { name: 'list' });
    const bar = h('progress', { id: 'import-progress', max: 1, value: 0, hidden: true });
    const barText = h('p', { id: 'import-status', class: 'hint' });
    const rejects = h('div', { class: 'rejects mono', id: 'import-rejects' });
    const upload = h('form', { class: 'row', id: 'import-form' },
      field('List', importList),
      field('File', h('input', { type: 'file', name: 'file', required: true })),
      field('Format', h('select', { name: 'format' }, ['lines', 'csv', 'us-dnc', 'fr-scrub'].map((f) => h('option', { value: f, text: f })))),
      field('Mode', h('select', { name: 'mode' },
        h('option', { value: 'add', text: 'add (a delta)' }), h('option', { value: 'remove', text: 'remove (deletions)' }),
        h('option', { value: 'replace', text: 'replace (the whole list)' }))),
      field('CSV column', h('input', { name: 'column', placeholder: 'name or 1-based', size: 10 })),
      field('Keep (fr-scrub)', h('input', { name: 'keep', size: 12 })),
      field('Produced at', h('input', { name: 'refreshed_at', type: 'datetime-local' })),
      h('button', { type: 'submit', class: 'primary', text: 'Import' }));
    upload.addEventListener('submit', async (event) => {
      event.preventDefault();
      const v = { ...formValues(upload), ...scopeValues() };
      const file = upload.querySelector('input[type=file]').files[0];
      const q = query({ tenant: v.tenant, campaign: v.campaign, format: v.format, mode: v.mode, column: v.column, keep: v.keep, refreshed_at: instant(v.refreshed_at) });
      bar.hidden = false; bar.value = 0; barText.className = 'hint'; barText.textContent = `uploading ${file.name}…`;
      rejects.replaceChildren();
      try {
        const response = await request('POST', `/v1/lists/${encodeURIComponent(v.list)}/import${q}`, { body: file, type: uploadType(file) });
        await events(response, (e) => {
          if (e.total) { bar.max = e.total; bar.value = e.lines; }
          if (e.event === 'progress') barText.textContent = `${fmt(e.lines)} of ${fmt(e.total)} lines read`;
          else if (e.event === 'rejected') rejects.append(h('div', { text: `line ${e.line}: ${e.why}` }));
          else if (e.event === 'done') {
            bar.value = bar.max;
            barText.className = 'ok';
            barText.textContent = `done: ${fmt(e.imported)} imported, ${fmt(e.duplicates)} duplicate${e.duplicates === 1 ? '' : 's'}, ${fmt(e.rejected)} rejected, ${fmt(e.skipped)} skipped (${fmt(e.total)} lines)`;
          } else if (e.event === 'error') { barText.className = 'error'; barText.textContent = e.why; }
        });
        await load();
      } catch (e) { barText.className = 'error'; barText.textContent = e.message; }
    });

    // Consent and refusal.
    const consentList = h('select', { name: 'list' });
    const consentMsg = h('p', { id: 'consent-result' });
    const consent = h('form', { class: 'row', id: 'consent-form' },
      field('Number', h('input', { name: 'number', required: true, autocomplete: 'off' })),
      field('Consent list', consentList),
      field('Granted at', h('input', { name: 'granted_at', type: 'datetime-local' })),
      field('Expires', h('input', { name: 'expires', type: 'datetime-local' })),
      h('button', { type: 'submit', name: 'op', value: 'consent', class: 'primary', text: 'Record consent' }),
      h('button', { type: 'submit', name: 'op', value: 'revoke', text: 'Revoke consent' }),
      h('button', { type: 'submit', name: 'op', value: 'refusal', text: 'Record a refusal' }),
      h('button', { type: 'submit', name: 'op', value: 'abandoned', text: 'Record an abandoned call' }));
    consent.addEventListener('submit', async (event) => {
      event.preventDefault();
      const op = event.submitter ? event.submitter.value : 'consent';
      const v = { ...formValues(consent), ...scopeValues() };
      const scopeBody = { tenant: v.tenant };
      if (v.campaign) scopeBody.campaign = v.campaign;
      try {
        let text;
        if (op === 'consent') {
          const body = { ...scopeBody, numbers: [v.number], list: v.list };
          if (v.granted_at) body.granted_at = instant(v.granted_at);
          if (v.expires) body.expires = instant(v.expires);
          const r = await postJson('/v1/consents', body);
          text = `${r.recorded} consent recorded, ${r.updated} updated`;
        } else if (op === 'revoke') {
          const r = await postJson('/v1/consents/revoke', { ...scopeBody, numbers: [v.number] });
          text = `consent revoked; ${r.red_listed} added to the red list`;
        } else {
          // An abandoned call counts toward its campaign's abandoned-call ceilings.
          const body = op === 'abandoned' ? { ...scopeBody, number: v.number } : { number: v.number, tenant: v.tenant };
          if (v.granted_at) body.at = instant(v.granted_at);
          const r = await postJson(`/v1/events/${op}`, body);
          text = `${op} recorded: ${r.rules.join(', ')}`;
          if (r.uncounted.length) text += `; not counted toward ${r.uncounted.join(', ')} (give its campaign above)`;
        }
        consentMsg.className = 'ok'; consentMsg.textContent = text;
        await load();
      } catch (e) { consentMsg.className = 'error'; consentMsg.textContent = e.message; }
    });

    function fillListSelects() {
      const pick = (select, kinds) => {
        const current = select.value;
        select.replaceChildren(...lists.filter((l) => kinds.includes(l.kind)).map((l) => h('option', { value: l.name, text: l.name })));
        if (current) select.value = current;
      };
      pick(oneList, ['block', 'allow']);
      pick(importList, ['block', 'allow', 'consent', 'reassigned']);
      pick(consentList, ['consent']);
    }

    root.append(
      h('div', { class: 'panel' }, h('h2', { text: 'Add or remove one number' }), one, oneMsg),
      h('div', { class: 'panel' }, h('h2', { text: 'Import a file' }), upload, bar, barText, rejects),
      h('div', { class: 'panel' }, h('h2', { text: 'Consent and refusal' }),
        h('p', { class: 'hint', text: 'A refusal or an abandoned call starts the cool-off of the packs in force ("Granted at" is then its time, default now); an abandoned call counts toward the abandoned-call ceiling of the campaign given above.' }),
        consent, consentMsg));
    await load();
  };

  function showError(where) {
    return (e) => { if (e.status !== 401) where.replaceChildren(h('p', { class: 'error', text: e.message })); };
  }

  // --- Scrub -----------------------------------------------------------------------------

  pages.scrub = async (root) => {
    const bar = h('progress', { id: 'scrub-progress', max: 1, value: 0, hidden: true });
    const status = h('p', { id: 'scrub-status', class: 'hint' });
    const summary = h('div', { id: 'scrub-summary' });
    const form = h('form', { class: 'row', id: 'scrub-form' },
      field('Leads file', h('input', { type: 'file', name: 'file', required: true })),
      field('Phone column', h('input', { name: 'column', value: '1', size: 10 })),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'header', value: 'true' }), 'first row is a header'),
      field('Caller ID', h('input', { name: 'caller_id', placeholder: 'optional' })),
      field('Class', h('select', { name: 'class' }, h('option', { value: 'campaign', text: 'campaign' }), h('option', { value: 'manual', text: 'manual' }))),
      field('Tenant', tenantSelect()),
      field('Campaign', h('input', { name: 'campaign', placeholder: 'optional' })),
      field('Time', h('input', { name: 'at', type: 'datetime-local', step: 1 })),
      h('button', { type: 'submit', class: 'primary', text: 'Scrub' }));
    root.append(h('h1', { text: 'Scrub a leads file' }),
      h('p', { class: 'hint', text: 'What the gate would do with each lead (nothing is counted), as callgate scrub writes it.' }),
      form, bar, status, summary);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const v = formValues(form);
      const file = form.querySelector('input[type=file]').files[0];
      const q = query({ column: v.column, header: v.header ? 'true' : '', caller_id: v.caller_id, class: v.class, tenant: v.tenant, campaign: v.campaign, at: instant(v.at), name: file.name });
      bar.hidden = false; bar.value = 0; status.className = 'hint'; status.textContent = `uploading ${file.name}…`;
      summary.replaceChildren();
      try {
        const response = await request('POST', `/v1/scrub/file${q}`, { body: file, type: uploadType(file) });
        await events(response, (e) => {
          if (e.total) { bar.max = e.total; bar.value = e.lines; }
          if (e.event === 'progress') status.textContent = `${fmt(e.rows)} leads decided (${fmt(e.lines)} of ${fmt(e.total)} lines)`;
          else if (e.event === 'error') { status.className = 'error'; status.textContent = e.why; }
          else if (e.event === 'done') {
            bar.value = bar.max;
            status.className = 'ok';
            status.textContent = `done: ${fmt(e.rows)} leads`;
            showScrub(summary, e, file.name);
          }
        });
      } catch (e) { status.className = 'error'; status.textContent = e.message; }
    });
  };

  function showScrub(out, e, name) {
    const reasons = Object.entries(e.reasons);
    const max = Math.max(1, ...reasons.map(([, n]) => n));
    out.replaceChildren(
      h('div', { class: 'cards' },
        card('Allowed', fmt(e.counts.ALLOW), `of ${fmt(e.rows)}`, 'good'),
        card('Blocked', fmt(e.counts.BLOCK), `of ${fmt(e.rows)}`),
        card('Deferred', fmt(e.counts.DEFER), `of ${fmt(e.rows)}`),
        card('Unreadable rows', fmt(e.unreadable), 'no phone column')),
      h('h2', { text: 'By reason' }),
      h('div', { class: 'bars', id: 'scrub-reasons' }, reasons.length ? reasons.map(([reason, n]) => {
        const verdict = reason.split(' ')[0];
        return h('div', { 'data-reason': reason }, h('span', { class: 'name mono', title: reason, text: reason }),
          h('span', { class: `bar ${verdict}`, style: `width:${Math.max(1, Math.round((400 * n) / max))}px` }), h('span', { text: fmt(n) }));
      }) : h('p', { class: 'hint', text: 'every lead would be allowed' })),
      h('p', {}, h('a', { href: `/v1/scrub/file/${encodeURIComponent(e.id)}`, download: `${name.replace(/\.[^.]*$/, '')}-scrubbed.csv`, id: 'scrub-download', text: 'Download the annotated CSV' })));
  }

  // --- Audit -----------------------------------------------------------------------------

  pages.audit = async (root) => {
    const form = h('form', { class: 'row', id: 'audit-form' },
      field('Number', h('input', { name: 'number', placeholder: 'as you would dial it', autocomplete: 'off' })),
      field('Since', h('input', { name: 'since', type: 'datetime-local' })),
      field('Until', h('input', { name: 'until', type: 'datetime-local' })),
      field('Verdict', h('select', { name: 'verdict' }, ['', 'ALLOW', 'BLOCK', 'DEFER'].map((v) => h('option', { value: v, text: v || 'any' })))),
      field('Tenant', h('input', { name: 'tenant', size: 10 })),
      field('Campaign', h('input', { name: 'campaign', size: 10 })),
      field('At most', h('input', { name: 'limit', type: 'number', value: 500, min: 1, max: 100000 })),
      h('button', { type: 'submit', class: 'primary', text: 'Search' }));
    const out = h('div', { id: 'audit-result' });
    root.append(h('h1', { text: 'Audit trail' }),
      h('p', { class: 'hint', text: 'Every recorded decision and every console change. Type a number as you would dial it: it is looked up the way the trail names it (its keyed hash). Without a number or a time, the last hour.' }),
      form, out);
    form.addEventListener('submit', (event) => { event.preventDefault(); search(false).catch(showError(out)); });
    async function search(reveal) {
      const v = formValues(form);
      // Nothing to narrow it: the last hour (a number alone searches its whole history).
      if (!v.number && !v.since && !v.until) {
        v.since = localInput(new Date(Date.now() - 3600 * 1000));
        form.querySelector('[name=since]').value = v.since;
      }
      const params = { number: v.number, since: instant(v.since), until: instant(v.until), verdict: v.verdict, tenant: v.tenant, campaign: v.campaign, limit: v.limit };
      out.replaceChildren(h('p', { class: 'hint', text: 'Searching…' }));
      const response = await request('GET', `/v1/audit${query(params)}`);
      const records = [];
      await events(response, (r) => records.push(r));
      const typed = v.number;
      const shownNumber = (r) => (reveal && typed ? typed : trailNumber(r.number));
      out.replaceChildren(
        h('div', { class: 'row' },
          h('span', { id: 'audit-count', text: `${fmt(records.length)} record(s)` }),
          h('a', { href: `/v1/audit${query({ ...params, format: 'csv' })}`, download: 'callgate-audit.csv', id: 'audit-export', text: 'Export as CSV' }),
          typed ? h('button', { type: 'button', class: 'link', text: reveal ? 'hide the number' : 'reveal the number I typed', onclick: () => search(!reveal).catch(showError(out)) }) : null),
        h('div', { class: 'scroll' }, h('table', { id: 'audit-table' },
          h('thead', {}, h('tr', {}, ['Time', 'Door', 'Verdict', 'Reason', 'Rule', 'Number', 'Tenant', 'Campaign', 'Lists', 'Packs', 'Config', 'Channel'].map((t) => h('th', { text: t })))),
          h('tbody', {}, records.map((r) => h('tr', {},
            h('td', { class: 'mono', text: when(r.time) }),
            h('td', { text: r.door }),
            h('td', {}, verdictSpan(r.verdict)),
            h('td', { class: 'mono', text: r.reason }),
            h('td', { class: 'mono', text: r.rule }),
            h('td', { class: 'num', title: tagTitle(r.number), text: shownNumber(r) }),
            h('td', { text: r.tenant }),
            h('td', { text: r.campaign }),
            h('td', { class: 'mono', text: Object.entries(r.lists).map(([n, ver]) => `${n}@${ver}`).join(' ') }),
            h('td', { class: 'mono', text: r.packs.join(' ') }),
            h('td', { class: 'mono', text: r.config_version }),
            h('td', { class: 'mono', text: r.channel })))))));
    }
  };

  // --- Rules -----------------------------------------------------------------------------

  pages.rules = async (root) => {
    const data = await getJson('/v1/rules');
    root.append(h('h1', { text: 'Rules in force' }),
      h('p', {}, 'Config version ', h('code', { id: 'rules-version', text: data.config_version || '—' }), `, numbers read in region ${data.default_region}.`),
      h('h2', { text: 'Packs' }),
      data.packs.length ? h('table', { id: 'packs' },
        h('thead', {}, h('tr', {}, ['Pack', 'Version', 'Regions', 'Description'].map((t) => h('th', { text: t })))),
        h('tbody', {}, data.packs.map((p) => h('tr', {}, h('td', { class: 'mono', text: p.id }), h('td', { class: 'mono', text: p.version }),
          h('td', { text: p.regions.join(' ') }), h('td', { text: p.description })))))
        : h('p', { class: 'hint', text: 'no rule pack enabled ([gate] packs)' }),
      h('h2', { text: 'Rules' }),
      h('table', { id: 'rules' },
        h('thead', {}, h('tr', {}, ['From', 'Kind', 'Rule', 'What it does', 'Source', ''].map((t) => h('th', { text: t })))),
        h('tbody', {}, data.rules.map((r) => h('tr', {},
          h('td', { class: 'mono', text: r.pack || 'config' }),
          h('td', { text: r.kind }),
          h('td', { class: 'mono', text: r.id }),
          h('td', { text: r.summary + (r.valid_from || r.valid_to ? ` (${r.valid_from || '…'} to ${r.valid_to || '…'})` : '') }),
          h('td', { class: 'hint', text: r.source }),
          h('td', {}, r.shadow ? h('span', { class: 'badge warn', text: 'shadow' }) : null,
            r.verify ? h('span', { class: 'badge', text: 'verify' }) : null,
            !r.enforced ? h('span', { class: 'badge red', text: 'not enforced' }) : null))))));
  };

  // Exposed for the browser tests only: the masking they check against phonenumbers' table.
  window.callgateConsole = { mask, trailNumber };

  document.addEventListener('DOMContentLoaded', () => {
    boot().catch((e) => { main().replaceChildren(h('p', { class: 'error', text: `The console could not start: ${e.message}` })); });
  });
})();
