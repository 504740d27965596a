// edgegen console: live regions refreshed by polling, and forms sent to the admin API as JSON.
// Plain JavaScript served by the control plane itself (no CDN, no build step).
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const POLL_MS = Number(document.body.dataset.pollMs || 2000);

  async function refresh() {
    const regions = document.querySelectorAll("[data-live]");
    if (!regions.length) return;
    let html;
    try {
      const r = await fetch(location.href, {headers: {"X-Console-Poll": "1"}, cache: "no-store"});
      if (r.status === 401 || r.redirected) { location.href = "/login"; return; }
      if (!r.ok) return;
      html = await r.text();
    } catch (e) { return; }
    const doc = new DOMParser().parseFromString(html, "text/html");
    regions.forEach(function (el) {
      const fresh = doc.getElementById(el.id);
      if (fresh && fresh.innerHTML !== el.innerHTML) {
        el.innerHTML = fresh.innerHTML;
        for (const a of fresh.attributes) el.setAttribute(a.name, a.value);
      }
    });
    const stamp = document.getElementById("updated");
    if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
  }

  function body(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      let v = el.value.trim();
      if (el.dataset.type === "list") {
        out[el.name] = v ? v.split(/[\n,]+/).map(function (s) { return s.trim(); }).filter(Boolean) : null;
        if (out[el.name] === null) delete out[el.name];
        continue;
      }
      if (el.dataset.type === "labels") {
        const labels = {};
        v.split(/[\n,]+/).map(function (s) { return s.trim(); }).filter(Boolean).forEach(function (kv) {
          const i = kv.indexOf("="); if (i > 0) labels[kv.slice(0, i)] = kv.slice(i + 1);
        });
        out[el.name] = labels;
        continue;
      }
      if (v === "") continue;
      out[el.name] = el.dataset.type === "number" ? Number(v) : v;
    }
    return out;
  }

  async function send(form) {
    const result = form.querySelector("[data-result]") || document.getElementById("flash");
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    result.className = "result";
    result.textContent = "…";
    const r = await fetch(form.dataset.api, {
      method: form.dataset.method || "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body(form)),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      result.className = "result error";
      result.textContent = (data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : r.statusText);
      return;
    }
    result.className = "result ok";
    const tmpl = form.dataset.ok || "done";
    result.textContent = tmpl.replace(/\{(\w+)\}/g, function (_, k) { return data && k in data ? data[k] : ""; });
    if (form.dataset.go && data && data.id !== undefined) {
      location.href = form.dataset.go.replace("{id}", data.id);
      return;
    }
    refresh();
  }

  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (!form.dataset.api) return;
    ev.preventDefault();
    send(form).catch(function (e) {
      const result = form.querySelector("[data-result]") || document.getElementById("flash");
      result.className = "result error";
      result.textContent = String(e);
    });
  });
  setInterval(refresh, POLL_MS);
})();
