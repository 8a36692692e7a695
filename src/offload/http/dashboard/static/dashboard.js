// offload dashboard: live refresh of the [data-live] regions without a full reload, and a
// confirmation before destructive actions. No framework, no inline script (the pages are
// served with a Content-Security-Policy that forbids it); every form works without this
// file too, by a plain POST and redirect.
(function () {
  "use strict";

  var body = document.body;
  var interval = parseInt(body.getAttribute("data-refresh-ms") || "0", 10);
  var busy = false;

  function reopen(region, openIds) {
    openIds.forEach(function (id) {
      var el = document.getElementById(id);
      if (el && region.contains(el)) {
        el.open = true;
      }
    });
  }

  function refreshRegion(region) {
    var url = region.getAttribute("data-live");
    return fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Accept": "text/html" }
    }).then(function (response) {
      if (response.redirected && new URL(response.url).pathname === "/login") {
        // the session ended: to the login form, and back to this page (not to the
        // region's own URL) afterwards
        var here = window.location.pathname + window.location.search;
        window.location.assign("/login?next=" + encodeURIComponent(here));
        return;
      }
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.text().then(function (html) {
        // a user reading a traceback keeps it open across refreshes
        var openIds = Array.prototype.map.call(
          region.querySelectorAll("details[open][id]"),
          function (d) { return d.id; }
        );
        region.innerHTML = html;
        reopen(region, openIds);
        body.removeAttribute("data-stale");
      });
    });
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length) {
      return;
    }
    // skip a refresh while the user is on a button inside a region, so a click is not lost
    var active = document.activeElement;
    for (var i = 0; i < regions.length; i++) {
      if (active && active !== body && regions[i].contains(active) && active.tagName === "BUTTON") {
        return;
      }
    }
    busy = true;
    Promise.all(Array.prototype.map.call(regions, refreshRegion))
      .catch(function () {
        body.setAttribute("data-stale", "true");
      })
      .then(function () {
        busy = false;
      });
  }

  // the notice of a finished action shows once: drop its parameters from the address,
  // so a reload, a bookmark or the way back after a new login does not repeat it
  var address = new URL(window.location.href);
  if (address.searchParams.has("done")) {
    address.searchParams.delete("done");
    address.searchParams.delete("n");
    window.history.replaceState(null, "", address.pathname + address.search + address.hash);
  }

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  if (interval > 0) {
    window.setInterval(refresh, interval);
    document.addEventListener("visibilitychange", refresh);
  }
})();
