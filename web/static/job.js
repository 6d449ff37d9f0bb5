// Live job state: polls the status endpoint and reloads the page when the state changes.
"use strict";
(function () {
  const section = document.getElementById("job");
  if (!section) return;
  const initial = section.dataset.state;
  if (!["uploaded", "queued", "running"].includes(initial) || section.dataset.hasChoices === "1") return;
  async function poll() {
    let job;
    try {
      const response = await fetch(section.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) return setTimeout(poll, 2000);
      job = await response.json();
    } catch (_) { return setTimeout(poll, 2000); }
    document.getElementById("state").textContent = job.state;
    const bar = document.getElementById("job-progress");
    if (bar) bar.value = job.progress;
    for (const li of document.querySelectorAll(".stages li")) {
      const s = li.dataset.stage;
      li.className = job.stages_done.includes(s) ? "done" : (s === job.stage ? "running" : "");
    }
    if (job.state !== initial || (job.choices && job.choices.length)) return location.reload();
    setTimeout(poll, 500);
  }
  setTimeout(poll, 300);
})();

// Segment colour swatches: the colour comes as data (a style attribute would need the CSP to
// allow inline styles).
for (const swatch of document.querySelectorAll(".swatch[data-color]")) {
  if (/^#[0-9a-fA-F]{6}$/.test(swatch.dataset.color)) swatch.style.background = swatch.dataset.color;
}
