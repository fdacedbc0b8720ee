// The simulator panel (demo only): POST JSON to /sim/... and follow the command.
(function () {
  "use strict";
  var panel = document.getElementById("sim-panel");
  if (!panel) { return; }
  var statusLine = document.getElementById("sim-status");
  var kioskSelect = document.getElementById("sim-kiosk");

  function withKiosk(url) {
    return kioskSelect ? url + "?kiosk=" + encodeURIComponent(kioskSelect.value) : url;
  }

  function follow(statusUrl, what, tries) {
    fetch(statusUrl, { headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (c) {
        if (c.status === "pending" || c.status === "running") {
          if (tries < 40) { window.setTimeout(function () { follow(statusUrl, what, tries + 1); }, 250); }
          else { statusLine.textContent = what + ": the kiosk has not picked this up (is the controller running?)"; }
          return;
        }
        statusLine.textContent = what + ": " + c.status + (c.error ? " (" + c.error + ")" : "");
      })
      .catch(function () { statusLine.textContent = what + ": cannot read the result"; });
  }

  function send(url, body, what) {
    statusLine.textContent = what + "…";
    fetch(withKiosk(url), {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    })
      .then(function (r) { return r.json().then(function (data) { return { ok: r.ok, data: data }; }); })
      .then(function (result) {
        if (!result.ok) { statusLine.textContent = what + ": " + (result.data.error || "refused"); return; }
        follow(result.data.status_url, what, 0);
      })
      .catch(function () { statusLine.textContent = what + ": the server did not answer"; });
  }

  panel.querySelectorAll("button.tap").forEach(function (button) {
    button.addEventListener("click", function () {
      send(panel.dataset.tapUrl, { uid: button.dataset.uid }, "Tap " + button.dataset.uid);
    });
  });
  document.getElementById("sim-uid-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var uid = document.getElementById("sim-uid").value;
    send(panel.dataset.tapUrl, { uid: uid }, "Tap " + uid);
  });
  document.querySelectorAll("#sim-door-form button").forEach(function (button) {
    button.addEventListener("click", function () {
      var n = parseInt(document.getElementById("sim-door").value, 10);
      var open = button.dataset.door === "true";
      var forced = button.dataset.forced === "true";
      var url = panel.dataset.doorUrl.replace(/0$/, String(n));
      var body = forced ? { open: true, forced: true } : { open: open };
      send(url, body, (forced ? "Force" : open ? "Open" : "Shut") + " door " + n);
    });
  });
  document.querySelectorAll("#sim-fault-form button").forEach(function (button) {
    button.addEventListener("click", function () {
      var body = {
        fault: document.getElementById("sim-fault").value,
        on: button.dataset.on === "true",
        compartment: parseInt(document.getElementById("sim-fault-compartment").value, 10) || null
      };
      send(panel.dataset.faultUrl, body, "Fault " + body.fault + (body.on ? " on" : " off"));
    });
  });
})();
