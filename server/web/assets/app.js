// databuild dashboard: keeps a live page current, and submits the history slider when let go.
// Pages are complete without this script; it only swaps in fresh copies of the parts marked
// data-live-id when the log gets a new durable event (one EventSource per page).
(function () {
  "use strict";
  var body = document.body;
  document.querySelectorAll("input[type=range][data-scrub]").forEach(function (r) {
    r.addEventListener("change", function () {
      // The text field of the same form also sends `at`: empty it so the slider's value wins.
      var t = r.form.querySelector("input[type=text][name=at]");
      if (t) t.disabled = true;
      r.form.submit();
    });
  });
  document.querySelectorAll("form.scrub").forEach(function (f) {
    f.addEventListener("submit", function () {
      var t = f.querySelector("input[type=text][name=at]");
      var r = f.querySelector("input[type=range][name=at]");
      if (t && r) { if (t.value.trim() !== "") r.disabled = true; else t.disabled = true; }
    });
  });
  if (body.dataset.live !== "1" || !window.EventSource) return;
  var seq = Number(body.dataset.seq || 0);
  var timer = null, busy = false, again = false;
  var es = new EventSource("/api/v1/events/stream?since=" + (seq + 1));
  // Let the connection go with the page (a browser allows few per host; a page kept in the
  // back/forward cache must not hold one).
  window.addEventListener("pagehide", function () { es.close(); });
  window.addEventListener("pageshow", function (e) { if (e.persisted) location.reload(); });
  es.onmessage = function (e) {
    if (Number(e.lastEventId) > seq) schedule();
  };
  function schedule() {
    if (timer === null) timer = setTimeout(refresh, 150);
  }
  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var s = Number(doc.body.dataset.seq || 0);
        if (s < seq) return;
        seq = s;
        body.dataset.seq = String(s);
        doc.querySelectorAll("[data-live-id]").forEach(function (n) {
          var old = document.querySelector('[data-live-id="' + n.dataset.liveId + '"]');
          if (old) old.replaceWith(document.importNode(n, true));
        });
        document.title = doc.title;
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
  }
})();
