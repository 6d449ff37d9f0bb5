// The threshold preview: histogram with the preset levels, three slices with the voxels at or
// above the level tinted. Everything is fetched once; moving the level redraws in the browser.
"use strict";
(function () {
  const section = document.getElementById("threshold");
  if (!section) return;
  const range = document.getElementById("level-range");
  const number = document.getElementById("level-number");
  const note = document.getElementById("threshold-note");
  const TINT = [255, 64, 32, 150]; // RGBA of an "inside" voxel

  function decode(values) {
    const bytes = Uint8Array.from(atob(values.data), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const n = values.width * values.height;
    const out = new Float32Array(n);
    const int16 = values.dtype === "int16";
    for (let i = 0; i < n; i++) out[i] = int16 ? view.getInt16(2 * i, true) : view.getFloat32(4 * i, true);
    return out;
  }

  function drawHistogram(canvas, preview, level) {
    const ctx = canvas.getContext("2d");
    const { edges, counts } = preview.histogram;
    const lo = edges[0], hi = edges[edges.length - 1];
    const w = canvas.width, h = canvas.height, top = 14, base = h - 16;
    const x = (v) => ((v - lo) / (hi - lo)) * w;
    const peak = Math.log10(1 + Math.max(...counts));
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#4a6fa5";
    counts.forEach((c, i) => {
      const bar = (Math.log10(1 + c) / peak) * (base - top);
      ctx.fillRect(x(edges[i]), base - bar, Math.max(1, x(edges[i + 1]) - x(edges[i])), bar);
    });
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#555";
    ctx.textAlign = "left";
    ctx.fillText(String(Math.round(lo)), 2, h - 3);
    ctx.textAlign = "right";
    ctx.fillText(String(Math.round(hi)) + " " + preview.units, w - 2, h - 3);
    ctx.textAlign = "center";
    for (const p of preview.levels) {
      if (p.level < lo || p.level > hi) continue;
      ctx.strokeStyle = "#888";
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(x(p.level), top); ctx.lineTo(x(p.level), base); ctx.stroke();
      ctx.fillText(p.name, x(p.level), 11);
    }
    ctx.setLineDash([]);
    ctx.strokeStyle = "rgb(255,64,32)";
    ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x(level), 0); ctx.lineTo(x(level), base); ctx.stroke();
    ctx.lineWidth = 1;
  }

  function drawSlice(slice, level) {
    const { canvas, image, values, mask, maskCtx } = slice;
    const ctx = canvas.getContext("2d");
    const px = mask.data;
    for (let i = 0; i < values.length; i++) {
      const inside = values[i] >= level;
      px.set(inside ? TINT : [0, 0, 0, 0], 4 * i);
    }
    maskCtx.putImageData(mask, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0);
    ctx.drawImage(maskCtx.canvas, 0, 0, canvas.width, canvas.height);
  }

  async function start() {
    const response = await fetch(section.dataset.previewUrl, { cache: "no-store" });
    if (!response.ok) { note.textContent = "The preview could not be loaded."; return; }
    const preview = await response.json();
    const { edges } = preview.histogram;
    range.min = String(Math.floor(edges[0]));
    range.max = String(Math.ceil(edges[edges.length - 1]));
    range.step = preview.units === "HU" ? "1" : "any";
    const initial = preview.default_level;
    range.value = number.value = String(initial);
    document.getElementById("level-units").textContent = preview.units === "HU" ? "HU" : "(stored units)";
    const slices = await Promise.all(preview.slices.map(async (s) => {
      const image = new Image();
      image.src = s.url;
      await image.decode();
      const canvas = document.getElementById("slice-" + s.plane);
      canvas.width = s.width; canvas.height = s.height;
      const off = document.createElement("canvas");
      off.width = s.values.width; off.height = s.values.height;
      const maskCtx = off.getContext("2d");
      return { canvas, image, values: decode(s.values), maskCtx, mask: maskCtx.createImageData(off.width, off.height) };
    }));
    const histogram = document.getElementById("histogram");
    const redraw = (level) => {
      if (!Number.isFinite(level)) return;
      drawHistogram(histogram, preview, level);
      for (const s of slices) drawSlice(s, level);
      section.dataset.level = String(level);
    };
    range.addEventListener("input", () => { number.value = range.value; redraw(Number(range.value)); });
    number.addEventListener("input", () => { range.value = number.value; redraw(Number(number.value)); });
    redraw(initial);
    section.dataset.ready = "1";
  }
  start().catch(() => { note.textContent = "The preview could not be drawn."; });
})();
