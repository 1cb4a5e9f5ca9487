// Portcullis console: the only script. Pages work without it; it adds live events and
// "select all". No inline script anywhere (the Content-Security-Policy forbids it).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Select every event on the page for a bulk handle / ignore.
  for (const all of document.querySelectorAll("input[data-select-all]")) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll("input[name=ids]")) {
        box.checked = all.checked;
      }
    });
  }

  // New events arrive as server-sent events carrying a rendered, escaped table row.
  const live = document.querySelector("[data-live-events]");
  if (live && window.EventSource) {
    const rows = document.getElementById(live.dataset.liveEvents);
    const status = live;
    const source = new EventSource(live.dataset.stream);
    source.addEventListener("open", () => {
      status.textContent = "Live: new events appear at the top.";
    });
    source.addEventListener("event", (message) => {
      const template = document.createElement("template");
      template.innerHTML = message.data;
      const row = template.content.firstElementChild;
      if (!row || document.getElementById(row.id)) {
        return;
      }
      row.classList.add("arrived");
      rows.prepend(row);
      const empty = document.getElementById("no-events");
      if (empty) {
        empty.remove();
      }
    });
    source.addEventListener("error", () => {
      status.textContent = "Live updates paused: reconnecting…";
    });
  }
});
