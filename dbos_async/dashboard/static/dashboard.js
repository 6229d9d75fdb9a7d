// Live pages (no inline script: the CSP forbids it). An element with
// data-live="<events URL>" listens to the dashboard's server-sent events and
// fires htmx's "refresh" on itself at each "changed" event; its hx-get then
// reloads it. Streams close while the tab is hidden and reopen when shown, so
// a background tab costs the server nothing. Each time a stream opens (the
// first time, after a reconnect, when the tab is shown again) the element
// refreshes once: a change made before the stream was listening would
// otherwise never show.
(function () {
  "use strict";
  var open = [];

  function connect() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var source = new EventSource(el.getAttribute("data-live"));
      var refresh = function () {
        if (window.htmx) { window.htmx.trigger(el, "refresh"); }
      };
      source.addEventListener("changed", refresh);
      source.addEventListener("open", refresh);
      open.push(source);
    });
  }

  function disconnect() {
    open.forEach(function (source) { source.close(); });
    open = [];
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { disconnect(); } else { disconnect(); connect(); }
  });
  document.addEventListener("DOMContentLoaded", connect);
})();
