"use strict";
// The triage page is a snapshot, rendered by the server: this only says how old it is,
// so a tab left open overnight does not pass for current data.
(() => {
  const loaded = Date.now();
  const out = document.getElementById("page-age");
  const tick = () => {
    const s = Math.floor((Date.now() - loaded) / 1000);
    out.textContent = s < 60 ? "" : "(this page is " + Math.floor(s / 60) + " min old)";
    out.className = s >= 120 ? "warn" : "dim";
  };
  tick();
  setInterval(tick, 15000);
})();
