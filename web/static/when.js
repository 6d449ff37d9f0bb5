// Times in the reader's own time zone, with how far away they are: "14:05 (in 59 minutes)".
"use strict";
(function () {
  const elements = document.querySelectorAll("time.when[datetime]");
  if (!elements.length) return;
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  function away(ms) {
    const minutes = Math.round(ms / 60000);
    if (Math.abs(minutes) < 90) return relative.format(minutes, "minute");
    const hours = Math.round(minutes / 60);
    if (Math.abs(hours) < 48) return relative.format(hours, "hour");
    return relative.format(Math.round(hours / 24), "day");
  }
  function show() {
    for (const el of elements) {
      const when = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(when.getTime())) continue;
      el.textContent = `${absolute.format(when)} (${away(when - Date.now())})`;
      el.title = when.toISOString();
    }
  }
  show();
  setInterval(show, 30000);
})();
