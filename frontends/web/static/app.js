// cloudbroker operations center: live instance updates from the server-sent event stream.
// Rows are updated in place with textContent only, so nothing from the server becomes markup.
"use strict";
(function () {
  const url = document.body.dataset.events;
  if (!url || !window.EventSource) return;
  const live = document.getElementById("live");

  function setState(cell, state) {
    if (!cell) return;
    let badge = cell.querySelector(".state");
    if (!badge) { badge = document.createElement("span"); cell.textContent = ""; cell.appendChild(badge); }
    badge.className = "state s-" + state;
    badge.textContent = state;
  }

  // which buttons each state offers (pages.OFFERED holds the same table)
  const OFFERED = {
    running: ["stop", "reboot", "terminate"], boot: ["stop", "terminate"],
    suspended: ["stop", "terminate"], poweroff: ["start", "terminate"],
    stopped: ["start", "terminate"], done: []
  };

  function fill(el, d) {
    el.dataset.instance = d.id;
    const offered = OFFERED[d.state] || ["terminate"];
    el.querySelectorAll("button[data-verb]").forEach(function (b) {
      b.closest("form").hidden = offered.indexOf(b.dataset.verb) < 0;
    });
    setState(el.querySelector(".istate"), d.state);
    const where = el.querySelector(".iwhere");
    if (where) where.textContent = d.where;
    const ip = el.querySelector(".iip");
    if (ip && d.private_ip) ip.textContent = d.private_ip;
  }

  function addRow(d) {
    const table = document.getElementById("instances");
    const tpl = document.getElementById("instance-row");
    if (!table || !tpl || table.dataset.live !== "add") return;
    const row = tpl.content.firstElementChild.cloneNode(true);
    const id = encodeURIComponent(d.id);
    const link = row.querySelector("a.iid");
    link.setAttribute("href", link.getAttribute("href").replace("__ID__", id));
    link.textContent = d.id;
    row.querySelector(".iname").textContent = d.name;
    row.querySelector(".iflavor").textContent = d.flavor;
    row.querySelectorAll("form").forEach(function (f) {
      f.setAttribute("action", f.getAttribute("action").replace("__ID__", id));
    });
    fill(row, d);
    row.classList.add("flash");
    table.tBodies[0].appendChild(row);
    const empty = document.querySelector("p.empty");
    if (empty) empty.remove();
  }

  function onInstance(ev) {
    let d;
    try { d = JSON.parse(ev.data); } catch (e) { return; }
    const found = document.querySelectorAll("[data-instance]");
    let seen = false;
    found.forEach(function (el) {
      if (el.dataset.instance === d.id) { fill(el, d); seen = true; }
    });
    if (!seen) addRow(d);
    appendEvents(d);
    refreshBoard(300);
  }

  function appendEvents(d) {
    const table = document.getElementById("events");
    if (!table || table.dataset.eventsFor !== d.id || !d.events) return;
    const body = table.tBodies[0];
    // by event id: two changes alike in every cell within one second are still two events
    const have = new Set(Array.from(body.rows).map(function (r) { return r.dataset.event; }));
    d.events.forEach(function (e) {
      if (have.has(e.id)) return;  // already on the page as rendered
      const change = (e.from || "") + (e.to ? " \u2192 " + e.to : "");
      const cells = [e.at, "transition", e.actor, change, e.message];
      const row = body.insertRow(-1);
      row.dataset.event = e.id;
      cells.forEach(function (text) {
        row.insertCell(-1).textContent = text;
      });
      row.classList.add("flash");
    });
  }

  // the dashboard's figures (counts, capacity, spend) are refetched as the stream speaks and
  // every so often for the hosts' samples; the server renders them, escaped, as on first load
  const board = document.getElementById("dashboard-live");
  let pending = null;
  function refreshBoard(delay) {
    if (!board || pending) return;
    pending = setTimeout(function () {
      fetch(board.dataset.fragment, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          pending = null;
          if (html === null) return;
          const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("dashboard-live");
          if (fresh) board.replaceChildren.apply(board, Array.from(fresh.childNodes));
        })
        .catch(function () { pending = null; });
    }, delay);
  }
  if (board) setInterval(function () { refreshBoard(0); }, 15000);

  function connect() {
    const es = new EventSource(url);
    es.addEventListener("open", function () { if (live) live.classList.add("on"); });
    es.addEventListener("error", function () { if (live) live.classList.remove("on"); });
    es.addEventListener("instance", onInstance);
  }
  connect();
})();
