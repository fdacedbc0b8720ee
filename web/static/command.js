// Follow kiosk commands on the page until the kiosk reports a result.
(function () {
  "use strict";
  var DONE = { done: true, failed: true, cancelled: true };
  document.querySelectorAll("[data-command-url]").forEach(function (box) {
    var url = box.dataset.commandUrl;
    var status = box.querySelector("[data-command-status]");
    var detail = box.querySelector("[data-command-detail]");
    var started = Date.now();
    function show(command) {
      box.dataset.status = command.status;
      status.textContent = command.status;
      if (command.error) {
        detail.textContent = command.error;
      } else if (command.status === "done") {
        detail.textContent = "the kiosk did it.";
      } else if (command.status === "running") {
        detail.textContent = "the kiosk is on it…";
      } else if (Date.now() - started > 30000) {
        detail.textContent = "the kiosk has not picked this up yet: is it offline? See Kiosks.";
      } else {
        detail.textContent = "waiting for the kiosk…";
      }
    }
    function poll() {
      fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(function (data) {
          show(data.command);
          if (!DONE[data.command.status]) { window.setTimeout(poll, 500); }
        })
        .catch(function () { window.setTimeout(poll, 2000); });
    }
    if (!DONE[box.dataset.status]) { poll(); }
  });
})();
