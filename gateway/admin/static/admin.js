// trino-gateway admin pages: small progressive enhancements. Every page works without this.
(function () {
  "use strict";

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  }

  function api(method, url, body) {
    var opts = { method: method, credentials: "same-origin",
                 headers: { "X-CSRF-Token": csrf(), "Accept": "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return { error: "HTTP " + r.status }; })
        .then(function (doc) { return { status: r.status, ok: r.ok, doc: doc }; });
    });
  }

  // Forms with data-confirm ask first (deactivate, delete); once answered here, the server
  // needs no confirmation page (without this script it shows one).
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
    if (!msg) return;
    if (!window.confirm(msg)) { ev.preventDefault(); return; }
    var c = ev.target.querySelector('input[name="confirmed"]');
    if (c) c.value = "yes";
  }, true);

  // Times: UTC by default; the browser's own zone on request (remembered in this browser).
  var tzKey = "tgw-timezone";
  function tzChoice() { try { return localStorage.getItem(tzKey) || "utc"; } catch (e) { return "utc"; } }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function applyTz(root) {
    var local = tzChoice() === "local";
    var zone = "";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
    root.querySelectorAll("time[data-ts]").forEach(function (el) {
      if (!el.hasAttribute("data-utc")) el.setAttribute("data-utc", el.textContent);
      if (!local) { el.textContent = el.getAttribute("data-utc"); return; }
      var d = new Date(parseFloat(el.getAttribute("data-ts")) * 1000);
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + " " + (zone || "local");
    });
  }
  var who = document.querySelector("header.top .who");
  if (who) {
    var label = document.createElement("label");
    label.className = "tz";
    label.appendChild(document.createTextNode("Times "));
    var sel = document.createElement("select");
    sel.id = "timezone";
    [["utc", "UTC"], ["local", "Local (this browser)"]].forEach(function (o) {
      var opt = document.createElement("option");
      opt.value = o[0]; opt.textContent = o[1];
      sel.appendChild(opt);
    });
    sel.value = tzChoice();
    sel.addEventListener("change", function () {
      try { localStorage.setItem(tzKey, sel.value); } catch (e) { /* private mode: this page only */ }
      applyTz(document);
    });
    label.appendChild(sel);
    who.insertBefore(label, who.firstChild);
  }
  applyTz(document);

  // Something the user is in the middle of: a text selection or a focused form field.
  function busyUser(root) {
    var sel = window.getSelection && window.getSelection();
    if (sel && !sel.isCollapsed && root.contains(sel.anchorNode)) return true;
    var a = document.activeElement;
    return !!(a && root.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName));
  }
  // How to find the focused element again in a fresh copy of the content.
  function focusKey(el) {
    if (el.id) return "#" + CSS.escape(el.id);
    var href = el.getAttribute && el.getAttribute("href");
    if (href) return el.tagName.toLowerCase() + '[href="' + CSS.escape(href) + '"]';
    return null;
  }

  // Dashboard: swap in a freshly rendered body every few seconds while the tab is visible,
  // keeping keyboard focus, and not while text in it is selected. When refreshes fail, say
  // so: a dead dashboard must not look live.
  var dash = document.querySelector("[data-refresh-url]");
  if (dash) {
    var busy = false, lastOk = Date.now(), failing = null;
    var stale = document.getElementById("stale");
    var every = Math.max(1, parseInt(dash.getAttribute("data-refresh-seconds"), 10) || 5) * 1000;
    var showStale = function () {
      if (!stale) return;
      if (!failing) { stale.hidden = true; dash.classList.remove("stale"); return; }
      stale.textContent = "Stale — last update " + Math.round((Date.now() - lastOk) / 1000) +
        " s ago (" + failing + "); retrying every " + every / 1000 + " s.";
      stale.hidden = false;
      dash.classList.add("stale");
    };
    setInterval(showStale, 1000);
    setInterval(function () {
      if (busy || document.hidden || busyUser(dash)) return;
      busy = true;
      fetch(dash.getAttribute("data-refresh-url"), { credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401 || r.status === 403) { window.location.reload(); return null; }
          if (!r.ok) { failing = "HTTP " + r.status; return null; }
          return r.text();
        })
        .then(function (html) {
          if (html === null || busyUser(dash)) return;
          var a = document.activeElement;
          var key = a && dash.contains(a) ? focusKey(a) : null;
          dash.innerHTML = html;
          applyTz(dash);
          if (key) { var again = dash.querySelector(key); if (again) again.focus(); }
          lastOk = Date.now();
          failing = null;
        })
        .catch(function () { failing = "the gateway does not answer"; })
        .then(function () { busy = false; showStale(); });
    }, every);
  }

  // Clusters page while a backend drains: reload every few seconds, unless the operator is
  // typing or selecting.
  var draining = document.querySelector("[data-reload-seconds]");
  if (draining) {
    var wait = Math.max(1, parseInt(draining.getAttribute("data-reload-seconds"), 10) || 5) * 1000;
    setInterval(function () {
      if (!document.hidden && !busyUser(document.body)) window.location.reload();
    }, wait);
  }

  // Rules editor: check as you type, save over the API, then watch the reload happen.
  var ed = document.getElementById("editor");
  if (!ed) return;
  var form = ed.form;
  var file = form.querySelector('[name="file"]').value;
  var baseField = form.querySelector('[name="baseVersion"]');
  var state = document.getElementById("check-state");
  var reload = document.getElementById("reload-state");
  var list = document.getElementById("problems");
  var save = document.getElementById("save");
  var seq = 0, timer = null;

  function setText(el, text, cls) { if (el) { el.textContent = text; el.className = cls || ""; } }

  function showProblems(problems) {
    list.innerHTML = "";
    problems.forEach(function (p) {
      var li = document.createElement("li");
      li.setAttribute("data-line", p.line || "");
      if (p.line) li.tabIndex = 0;   // Enter on it jumps to the line, like a click
      li.textContent = (p.file !== file ? p.file + " " : "") + (p.line ? "line " + p.line + ": " : "") + p.message;
      list.appendChild(li);
    });
  }

  function check() {
    var mine = ++seq;
    setText(state, "Checking…", "checking");
    api("POST", ed.getAttribute("data-check-url"), { file: file, content: ed.value }).then(function (res) {
      if (mine !== seq) return;   // a newer check is on its way
      if (!res.ok) { setText(state, res.doc.error || "Check failed", "bad"); return; }
      var doc = res.doc;
      showProblems(doc.problems);
      var own = doc.problems.filter(function (p) { return p.file === file; }).length;
      if (doc.ok) setText(state, "Valid: " + doc.rules + " rule" + (doc.rules === 1 ? "" : "s") + " in the ruleset", "ok");
      else setText(state, doc.problems.length + " problem" + (doc.problems.length === 1 ? "" : "s"), "bad");
      if (save) save.disabled = own > 0;
    }).catch(function () { if (mine === seq) setText(state, "Cannot reach the gateway", "bad"); });
  }

  ed.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(check, 250); });
  // Tab indents and Shift+Tab outdents (documented beside the editor); Esc hands Tab back to
  // the browser for the next key press, so the keyboard can always leave the editor.
  var escaped = false;
  ed.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") { escaped = true; return; }
    if (ev.key !== "Tab" || escaped || ed.readOnly) { escaped = false; return; }
    ev.preventDefault();
    var s = ed.selectionStart;
    if (!ev.shiftKey) {
      ed.setRangeText("  ", s, ed.selectionEnd, "end");
    } else {
      var lineStart = ed.value.lastIndexOf("\n", s - 1) + 1;
      var n = ed.value.substr(lineStart, 2) === "  " ? 2 : (ed.value[lineStart] === " " ? 1 : 0);
      if (n) ed.setRangeText("", lineStart, lineStart + n, "preserve");
    }
    ed.dispatchEvent(new Event("input"));
  });
  ed.addEventListener("blur", function () { escaped = false; });
  list.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); ev.target.click(); }
  });
  list.addEventListener("click", function (ev) {
    var line = parseInt(ev.target.getAttribute("data-line"), 10);
    if (!line) return;
    var lines = ed.value.split("\n"), start = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    ed.focus();
    ed.setSelectionRange(start, start + (lines[line - 1] || "").length);
  });

  function watchReload(version, savedAt) {
    var deadline = Date.now() + 15000;
    function poll() {
      api("GET", ed.getAttribute("data-status-url")).then(function (res) {
        var s = res.doc;
        if (res.ok && s.version === version) {
          setText(reload, "Reloaded: the gateway now routes with version " + version + " (" + s.rules + " rules).", "ok");
          var v = document.getElementById("rules-version"); if (v) v.textContent = version;
          return;
        }
        if (res.ok && s.error && s.errorAt && s.errorAt * 1000 >= savedAt - 1000) {
          setText(reload, "Saved, but the reload failed: " + s.error, "bad");
          return;
        }
        if (Date.now() > deadline) { setText(reload, "Saved; no reload seen yet. Check the rules page.", "bad"); return; }
        setTimeout(poll, 200);
      }).catch(function () { setTimeout(poll, 500); });
    }
    poll();
  }

  var saveUrl = ed.getAttribute("data-save-url");
  if (saveUrl) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (save) save.disabled = true;
      setText(reload, "Saving…", "");
      var savedAt = Date.now();
      api("PUT", saveUrl, { file: file, content: ed.value, baseVersion: baseField.value || null }).then(function (res) {
        if (save) save.disabled = false;
        if (!res.ok) {
          setText(reload, "Not saved: " + (res.doc.error || "HTTP " + res.status), "bad");
          if (res.doc.problems) showProblems(res.doc.problems);
          return;
        }
        baseField.value = res.doc.fileVersion || "";
        setText(reload, "Saved. Waiting for the gateway to reload the rules…", "");
        watchReload(res.doc.version, savedAt);
      }).catch(function () {
        if (save) save.disabled = false;
        setText(reload, "Not saved: cannot reach the gateway", "bad");
      });
    });
  }
  if (!ed.readOnly) check();
})();
