// The kiosk screen: poll the tiny screen JSON and show what the controller published.
// Text goes in with textContent only.
(function () {
  "use strict";
  var body = document.getElementById("screen");
  var source = body.dataset.source;
  var pollMs = parseInt(body.dataset.pollMs, 10) || 120;
  var last = null;
  var IDLE_TITLE = "Tap your card";

  function apply(state) {
    var key = JSON.stringify(state);
    if (key === last) { return; }
    last = key;
    var s = state.screen;
    body.className = "tone-" + s.tone + " status-" + state.status;
    document.getElementById("title").textContent = s.title || IDLE_TITLE;
    document.getElementById("message").textContent = s.message || "";
    document.getElementById("name").textContent = s.name || "";
    var box = document.getElementById("compartment");
    document.getElementById("compartment-number").textContent = s.compartment ? String(s.compartment) : "";
    box.hidden = !s.compartment;
    var overlay = document.getElementById("overlay");
    overlay.hidden = state.status === "ok" || state.status === "fault";
    document.getElementById("overlay-text").textContent =
      state.status === "unknown" ? "Starting up…" : "Out of order: please see the office";
    document.getElementById("fault").hidden = state.status !== "fault";
    document.getElementById("network").hidden = state.network !== "offline";
    body.dataset.seq = String(s.seq);
    // When this change reached the screen (ms since the epoch): bench/kiosk_screen.py reads it.
    body.dataset.appliedAt = String(performance.timeOrigin + performance.now());
  }

  function poll() {
    fetch(source, { headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(apply)
      .catch(function () { /* keep the last screen; try again */ })
      .then(function () { window.setTimeout(poll, pollMs); });
  }
  poll();
})();
