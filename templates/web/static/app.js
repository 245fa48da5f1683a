// hostd dashboard: progressive enhancement only. Every form works without
// this file. It follows the hosting and its backups live over Server-Sent
// Events, adds copy buttons, and reads an uploaded public key into a form. It writes
// text with textContent only, never HTML, so nothing from the server (event
// messages, console text) can become markup.
'use strict';
(function () {
  for (const el of document.querySelectorAll('.js-only')) el.hidden = false;

  for (const b of document.querySelectorAll('button.copy')) {
    b.addEventListener('click', function () {
      const t = document.getElementById(b.dataset.copy);
      if (!t || !navigator.clipboard) return;
      navigator.clipboard.writeText(t.textContent.trim()).then(function () {
        b.textContent = 'Copied';
        setTimeout(function () { b.textContent = 'Copy'; }, 1500);
      });
    });
  }

  const file = document.getElementById('key-file');
  if (file) {
    file.addEventListener('change', function () {
      const f = file.files[0];
      if (!f || f.size > 16384) return;
      f.text().then(function (t) {
        const ta = document.querySelector('textarea[name=ssh_key]');
        ta.value = (ta.value.trim() + '\n' + t.trim()).trim();
      });
    });
  }

  function setText(id, v) {
    const e = document.getElementById(id);
    if (e) e.textContent = v;
  }
  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }
  if (!window.EventSource) return;

  // The backups page: the list, the busy reason and each running backup's
  // step and seconds, live.
  const bl = document.getElementById('backups-live');
  if (bl) {
    const bs = new EventSource(bl.dataset.events);
    bs.addEventListener('backups', function (ev) {
      const s = JSON.parse(ev.data);
      setText('backup-storage', s.storage);
      const btn = document.getElementById('backup-now');
      if (btn) btn.disabled = !!s.busy;
      setText('backup-busy', s.busy ? 'Not now: ' + s.busy + '.' : '');
      const tb = document.getElementById('backups');
      if (!tb) return;
      tb.replaceChildren();
      for (const b of s.backups) {
        const tr = document.createElement('tr');
        tr.dataset.state = b.state;
        cell(tr, b.created);
        const st = cell(tr, b.state + (b.elapsed_s != null ? ' (' + b.elapsed_s + ' s)' : ''),
                        b.state === 'Completed' ? 'ok' : (b.state === 'Failed' ? 'bad' : ''));
        if (b.message) {
          const m = document.createElement('span');
          m.className = 'muted';
          m.textContent = b.message;
          st.append(document.createElement('br'), m);
        }
        cell(tr, b.trigger);
        cell(tr, b.kind || '–');
        cell(tr, b.size);
        cell(tr, b.offsite ? 'yes' : '–');
        const sha = document.createElement('code');
        sha.textContent = b.sha;
        cell(tr, '').appendChild(sha);
        const id = document.createElement('code');
        id.textContent = b.short;
        cell(tr, '').appendChild(id);
        const act = cell(tr, '');
        if (b.restorable) {
          const a = document.createElement('a');
          a.href = '/ui/backups/restore?id=' + encodeURIComponent(b.id);
          a.className = 'restore-link';
          a.textContent = 'Restore…';
          act.appendChild(a);
        }
        tb.appendChild(tr);
      }
      if (!s.backups.length) {
        const tr = document.createElement('tr');
        cell(tr, 'No backups yet.', 'muted').colSpan = 9;
        tb.appendChild(tr);
      }
    });
    bs.addEventListener('gone', function () { bs.close(); location.assign('/ui/hosting'); });
    bs.addEventListener('ended', function () { bs.close(); location.assign('/ui/login'); });
    bs.addEventListener('replaced', function () { bs.close(); });
  }

  const live = document.getElementById('live');
  if (!live) return;

  function update(s) {
    // A disk lost (or back) changes what the page offers: render it anew.
    if (live.dataset.diskLost && live.dataset.diskLost !== String(s.disk_lost)) {
      location.reload();
      return;
    }
    live.dataset.phase = s.phase;
    live.dataset.converged = s.converged ? 'true' : 'false';
    setText('phase', s.phase);
    setText('message', s.message);
    const p = document.getElementById('progress');
    if (p) { p.value = s.progress; p.textContent = s.progress + '%'; }
    const a = document.getElementById('web-url');
    if (a && s.web_url && /^https?:\/\//.test(s.web_url)) {
      a.href = s.web_url;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      a.textContent = s.web_url;
    }
    if (s.ssh_command) setText('ssh-cmd', s.ssh_command);
    setText('size', s.vcpus + ' vCPU, ' + s.memory_mib + ' MiB memory, ' + s.disk_gib + ' GiB disk');
    setText('storage', s.storage);
    setText('keys-status', s.keys_status);
    setText('generation', s.observed_generation + ' of ' + s.generation);
    const tb = document.getElementById('conditions');
    if (tb) {
      tb.replaceChildren();
      for (const c of s.conditions) {
        const tr = document.createElement('tr');
        cell(tr, c[0]);
        cell(tr, c[1] ? 'True' : 'False', c[1] ? 'ok' : 'bad');
        cell(tr, c[2]);
        cell(tr, c[3]);
        tb.appendChild(tr);
      }
    }
    const ol = document.getElementById('events');
    if (ol) {
      ol.replaceChildren();
      for (const e of s.events) {
        const li = document.createElement('li');
        if (e[1]) li.className = 'warning';
        const t = document.createElement('time');
        t.textContent = e[0];
        const b = document.createElement('b');
        b.textContent = e[2];
        li.append(t, ' ', b, ' ', e[3]);
        ol.appendChild(li);
      }
    }
  }

  const es = new EventSource(live.dataset.events);
  es.addEventListener('status', function (ev) { update(JSON.parse(ev.data)); });
  es.addEventListener('gone', function () { es.close(); location.assign('/ui/hosting'); });
  es.addEventListener('ended', function () { es.close(); location.assign('/ui/login'); });
  // Newer pages of this user hold the live views now: this one stays as it is.
  es.addEventListener('replaced', function () { es.close(); });
})();
