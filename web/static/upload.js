// The upload form: folder picker, drag and drop (folders too), and a real upload progress bar.
"use strict";
(function () {
  const form = document.getElementById("upload-form");
  const zone = document.getElementById("drop-zone");
  const chosen = document.getElementById("chosen");
  const errorBox = document.getElementById("upload-error");
  const maxBytes = Number(form.dataset.maxBytes);
  let dropped = [];  // File objects from drag and drop

  function selectedFiles() {
    const picked = [...document.getElementById("folder-input").files,
                    ...document.getElementById("file-input").files];
    return picked.length ? picked : dropped;
  }
  function describe() {
    const files = selectedFiles();
    const bytes = files.reduce((n, f) => n + f.size, 0);
    chosen.textContent = files.length
      ? `${files.length} file(s), ${(bytes / 1048576).toFixed(1)} MiB chosen.` : "Nothing chosen yet.";
  }
  const budget = document.getElementById("max-triangles");
  const budgetSize = document.getElementById("budget-size");
  budget.addEventListener("input", () => {
    const n = Number(budget.value);
    budgetSize.textContent = budget.value && n > 0
      ? `≈ ${Math.round((84 + 50 * n) / 1e6).toLocaleString()} MB as binary STL`
      : "no limit: the full detail (often 100 MB or more)";
  });
  for (const id of ["folder-input", "file-input"]) {
    document.getElementById(id).addEventListener("change", () => { dropped = []; describe(); });
  }

  function readEntry(entry, out) {
    if (entry.isFile) return new Promise((ok) => entry.file((f) => { out.push(f); ok(); }, ok));
    const reader = entry.createReader();
    return new Promise((ok) => {
      const batch = () => reader.readEntries(async (entries) => {
        if (!entries.length) return ok();
        for (const e of entries) await readEntry(e, out);
        batch();
      }, ok);
      batch();
    });
  }
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const out = [];
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
    if (entries.every(Boolean)) { for (const entry of entries) await readEntry(entry, out); }
    else out.push(...e.dataTransfer.files);
    form.reset();
    dropped = out;
    describe();
  });

  function fail(message, pricingUrl) {
    errorBox.textContent = message;
    if (pricingUrl) {  // 402: no credits (or the free tier is used up)
      const link = document.createElement("a");
      link.href = pricingUrl; link.id = "pricing-link"; link.textContent = "See the prices";
      errorBox.append(" ", link);
    }
    errorBox.hidden = false;
    document.getElementById("submit").disabled = false;
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    errorBox.hidden = true;
    const files = selectedFiles();
    if (!files.length) return fail("Choose a folder, DICOM files or a .zip first.");
    const total = files.reduce((n, f) => n + f.size, 0);
    if (total > maxBytes) {
      return fail(`The upload is ${(total / 1073741824).toFixed(2)} GiB, over the limit of ` +
                  `${(maxBytes / 1073741824).toFixed(2)} GiB. Split it or crop it first.`);
    }
    const data = new FormData();
    for (const [name, value] of new FormData(form)) if (name !== "files") data.append(name, value);
    // Only numbered parts reach the server's disk; the names are not kept.
    files.forEach((f) => data.append("files", f, "part"));
    const status = document.getElementById("upload-status");
    const bar = document.getElementById("upload-progress");
    const text = document.getElementById("upload-text");
    status.hidden = false;
    document.getElementById("submit").disabled = true;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (ev) => {
      if (!ev.lengthComputable) return;
      bar.value = (100 * ev.loaded) / ev.total;
      text.textContent = `${(ev.loaded / 1048576).toFixed(1)} of ${(ev.total / 1048576).toFixed(1)} MiB sent`;
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* an HTML error page */ }
      if (xhr.status === 201 && body.url) { text.textContent = "Uploaded; starting…"; location.href = body.url; }
      else if (xhr.status === 413) fail("The upload is larger than the server's limit. Split it or crop it first.");
      else fail(body.error || `The upload failed (HTTP ${xhr.status}).`, body.pricing_url);
    });
    xhr.addEventListener("error", () => fail("The upload was interrupted. Check the connection and try again."));
    xhr.send(data);
  });
})();

// Segment rows: each a model of its own (name, preset/level/band, colour), added and removed.
(() => {
  const rows = document.getElementById("segment-rows");
  const template = document.getElementById("segment-row");
  const add = document.getElementById("add-segment");
  if (!rows || !template || !add) return;
  const palette = ["#e8dcc0", "#d99c7a", "#c0504d", "#4f81bd", "#9bbb59", "#8064a2"];
  add.addEventListener("click", () => {
    const row = template.content.firstElementChild.cloneNode(true);
    const color = row.querySelector('[name="segment_color"]');
    color.defaultValue = color.value = palette[rows.children.length % palette.length];
    row.querySelector(".remove-segment").addEventListener("click", () => row.remove());
    rows.append(row);
    row.querySelector('[name="segment_name"]').focus();
  });
})();
