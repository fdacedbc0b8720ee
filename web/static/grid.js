// The live locker grid: poll the compartments JSON and repaint the cells that changed.
// Everything from the server is written with textContent (never innerHTML).
(function () {
  "use strict";
  var root = document.getElementById("grid");
  if (!root) { return; }
  var source = root.dataset.source;
  var pollMs = parseInt(root.dataset.pollMs, 10) || 2000;
  var pupilUrl = root.dataset.pupilUrl;
  var custodyUrl = root.dataset.custodyUrl;
  var FLAG_TEXT = JSON.parse(root.dataset.flagLabels || "{}");
  var statusLine = document.getElementById("grid-status");
  var etag = null;
  var LABELS = {
    free: "free", pending: "being deposited", in_locker: "in locker",
    confiscated: "confiscated", held: "held: contact the DSL", out_of_service: "out of service"
  };
  var STATUS_TEXT = { ok: "online", fault: "fault", stopped: "stopped", offline: "offline", unknown: "never seen" };

  function hhmm(iso) {
    if (!iso) { return ""; }
    var d = new Date(iso);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  function paintCell(c) {
    var li = document.getElementById("cell-" + c.id);
    if (!li) { return; }
    var cls = "cell s-" + c.state;
    if (c.kind === "secure") { cls += " secure"; }
    if (c.door === "open") { cls += " door-open"; }
    if (c.alarm) { cls += " alarm"; }
    if (c.out_of_service) { cls += " oos"; }
    if (li.className !== cls) { li.className = cls; }
    li.querySelector(".state").textContent = LABELS[c.state] || c.state;
    var who = li.querySelector(".who");
    var custody = c.custody;
    if (custody && custody.pupil) {
      who.hidden = false;
      who.textContent = custody.pupil.display_name;
      if (c.state === "confiscated" || c.state === "held") {
        who.href = custodyUrl.replace(/0$/, String(custody.id));
      } else {
        who.href = pupilUrl.replace("ADMISSION", encodeURIComponent(custody.pupil.admission_number));
      }
    } else {
      who.hidden = true;
      who.textContent = "";
      who.removeAttribute("href");
    }
    li.querySelector(".since").textContent = custody ? hhmm(custody.since) : "";
    var flags = [];
    if (c.door === "open") { flags.push("door open"); }
    if (c.alarm) { flags.push("alarm: " + c.alarm); }
    if (c.out_of_service && c.state !== "out_of_service") { flags.push("out of service"); }
    var flagged = custody && custody.flag;
    if (flagged) { flags.push(FLAG_TEXT[custody.flag] || "to check"); }
    var shown = li.querySelector(".flags");
    shown.textContent = flags.join(" ");
    if (flagged && custody.flag_detail) { shown.title = custody.flag_detail; } else { shown.removeAttribute("title"); }
    li.classList.toggle("flagged", !!flagged);
  }

  function paintKiosk(k) {
    var section = root.querySelector('section[data-kiosk="' + CSS.escape(k.name) + '"]');
    if (!section) { return; }
    var badge = section.querySelector("[data-kiosk-status]");
    badge.className = "badge st-" + k.status;
    badge.textContent = STATUS_TEXT[k.status] || k.status;
    var faults = section.querySelector("[data-kiosk-faults]");
    faults.textContent = (k.faults || []).join("; ");
    faults.hidden = !(k.faults && k.faults.length);
    var beat = section.querySelector("[data-kiosk-heartbeat]");
    beat.textContent = k.heartbeat_at ? "heartbeat at " + new Date(k.heartbeat_at).toLocaleTimeString() : "never seen";
  }

  function paintSummary(compartments, awaiting) {
    var counts = { doors_open: 0, alarms: 0 };
    if (typeof awaiting === "number") { counts.awaiting_collection = awaiting; }
    Object.keys(LABELS).forEach(function (s) { counts[s] = 0; });
    compartments.forEach(function (c) {
      counts[c.state] = (counts[c.state] || 0) + 1;
      if (c.door === "open") { counts.doors_open += 1; }
      if (c.alarm) { counts.alarms += 1; }
    });
    document.querySelectorAll("[data-count]").forEach(function (el) {
      var key = el.dataset.count;
      if (key in counts) { el.textContent = String(counts[key]); }
    });
  }

  function poll() {
    var headers = { "Accept": "application/json" };
    if (etag) { headers["If-None-Match"] = etag; }
    fetch(source, { headers: headers, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 304) { return null; }
        if (response.status === 401) { window.location.reload(); return null; }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        etag = response.headers.get("ETag");
        return response.json();
      })
      .then(function (data) {
        if (data) {
          data.compartments.forEach(paintCell);
          data.kiosks.forEach(paintKiosk);
          paintSummary(data.compartments, data.awaiting_collection);
          root.dataset.version = String((parseInt(root.dataset.version || "0", 10) + 1));
        }
        statusLine.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
        statusLine.classList.remove("stale");
      })
      .catch(function () {
        statusLine.textContent = "Cannot reach the server; retrying.";
        statusLine.classList.add("stale");
      })
      .then(function () { window.setTimeout(poll, pollMs); });
  }
  window.setTimeout(poll, pollMs);
})();
