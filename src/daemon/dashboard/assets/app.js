// berth's dashboard script: keeps the pages current without reloads. It reads the JSON API with the session
// cookie (which the API accepts for GET only) and follows a deploy's log over SSE. Data is only ever put in the
// page as text (textContent, text nodes), never as HTML.
'use strict';

(() => {
  const FINAL = ['succeeded', 'failed', 'cancelled', 'superseded', 'timed_out', 'interrupted'];

  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const cell = (content) => {
    const td = el('td');
    if (content instanceof Node) td.append(content);
    else td.textContent = content === undefined || content === null || content === '' ? '—' : String(content);
    return td;
  };
  const badge = (state, title) => {
    const span = el('span', 'state s-' + state, state);
    if (title) span.title = title;
    return span;
  };
  const shortTime = (t) => (t ? t.replace('T', ' ').replace(/\.\d+/, '').replace(/Z$/, '') : '');
  const timeOfDay = (t) => shortTime(t).split(' ')[1] || '';
  const seconds = (from, to) => ((to ? Date.parse(to) : Date.now()) - Date.parse(from)) / 1000;
  const duration = (from, to) => {
    if (!from) return '';
    const s = Math.max(0, seconds(from, to));
    const shown = s < 60 ? s.toFixed(1) + ' s' : Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
    return timeOfDay(from) + (to ? ' · ' + shown : ' · ' + shown + '…');
  };

  // A JSON read of the API; a 401 (session ended) stops the page's updates and says so.
  let stopped = false;
  const getJSON = async (url) => {
    const response = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (response.status === 401) {
      stopped = true;
      const main = document.querySelector('main');
      if (main && !document.getElementById('stale')) {
        const note = el('p', 'error', 'Your session ended: ');
        note.id = 'stale';
        const link = el('a', '', 'sign in again');
        link.href = '/ui/sign-in?next=' + encodeURIComponent(location.pathname + location.search);
        note.append(link);
        main.prepend(note);
      }
    }
    if (!response.ok) throw new Error(url + ': ' + response.status);
    return response.json();
  };

  // Calls `update` now and then every `ms` until it returns true (done) or the session ended.
  // A hidden tab skips its reads (and catches up when shown again, within `ms`).
  const every = (ms, update) => {
    const tick = async () => {
      let done = false;
      try {
        if (!document.hidden) done = await update();
      } catch (error) {
        console.warn(error);
      }
      if (!done && !stopped) setTimeout(tick, ms);
    };
    tick();
  };

  // Tables of deploys (overview, service, deploy list).
  const deployRow = (d) => {
    const tr = el('tr');
    tr.dataset.id = d.id;
    const link = el('a', '', '#' + d.id);
    link.href = '/ui/deploys/' + d.id;
    tr.append(
      cell(link),
      cell(d.destination ? d.service + ' (' + d.destination + ')' : d.service),
      cell(d.kind),
      cell(d.version || d.ref),
      cell(badge(d.state)),
      cell(d.requested_by),
      cell(shortTime(d.created_at)),
    );
    return tr;
  };
  for (const tbody of document.querySelectorAll('tbody[data-poll-deploys]')) {
    const url = tbody.dataset.pollDeploys;
    if (!url) continue;
    every(3000, async () => {
      const page = await getJSON(url);
      tbody.replaceChildren(...page.deploys.map(deployRow));
      const empty = tbody.closest('.scroll') && tbody.closest('.scroll').nextElementSibling;
      if (empty && empty.classList.contains('empty')) empty.hidden = page.deploys.length > 0;
      return false;
    });
  }

  // What runs on each host (overview).
  const hostRow = (h) => {
    const tr = el('tr');
    tr.append(
      cell(h.destination ? h.host + ' (' + h.destination + ')' : h.host),
      cell(h.role),
      cell(h.version),
      cell(badge(h.state, h.error)),
    );
    return tr;
  };
  const servicesUrl = document.body.dataset.pollServices;
  if (servicesUrl) {
    every(10000, async () => {
      const services = await getJSON(servicesUrl);
      for (const tbody of document.querySelectorAll('tbody[data-service-hosts]')) {
        const service = services.find((s) => s.name === tbody.dataset.serviceHosts);
        if (service && service.hosts.length) tbody.replaceChildren(...service.hosts.map(hostRow));
      }
      return false;
    });
  }

  // A deploy: its state and timeline polled until it ends, its log followed live.
  const deployId = document.body.dataset.deployId;
  if (deployId) {
    const text = (id, value) => {
      const node = document.getElementById(id);
      if (node) node.textContent = value === undefined || value === null || value === '' ? '—' : String(value);
    };
    const stageItem = (stage) => {
      const li = el('li', 'stage st-' + stage.state);
      li.append(el('span', 'name', stage.name), ' ', badge(stage.state), ' ',
        el('span', 'time', duration(stage.started_at, stage.ended_at)));
      const hosts = el('ul');
      for (const host of stage.hosts) {
        const item = el('li');
        item.append(el('span', 'host', host.host), ' ', badge(host.state), ' ',
          el('span', 'time', duration(host.started_at, host.ended_at)));
        hosts.append(item);
      }
      li.append(hosts);
      return li;
    };
    const show = (d) => {
      document.getElementById('deploy-state').replaceChildren(badge(d.state));
      text('deploy-version', d.version);
      text('deploy-commit', d.commit);
      text('deploy-started', shortTime(d.started_at));
      text('deploy-ended', shortTime(d.ended_at));
      const error = document.getElementById('deploy-error');
      error.textContent = d.error || '';
      error.hidden = !d.error;
      document.getElementById('stages').replaceChildren(...d.stages.map(stageItem));
      const final = FINAL.includes(d.state);
      const cancel = document.getElementById('cancel-form');
      if (cancel && final) cancel.hidden = true;
      document.body.dataset.state = d.state;
      return final;
    };
    every(1000, async () => show(await getJSON('/deploys/' + encodeURIComponent(deployId))));

    const log = document.getElementById('log');
    const source = new EventSource('/deploys/' + encodeURIComponent(deployId) + '/logs');
    source.onmessage = (event) => {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 40;
      log.append(document.createTextNode(event.data + '\n'));
      if (atBottom) log.scrollTop = log.scrollHeight;
    };
    // The server closes the stream after `end`: without close() the browser would reconnect to it.
    source.addEventListener('end', () => {
      source.close();
      log.dataset.ended = 'true';
      getJSON('/deploys/' + encodeURIComponent(deployId)).then(show, () => {});
    });
  }
})();
