// The click-to-segment page: prompts go to the server, masks come back as COCO RLE and are
// decoded and drawn here (the server sends no pixels, and redrawing needs no round trip).
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40],
];
const MASK_COLOUR = [30, 144, 255];
const DRAG_PIXELS = 4; // screen pixels a mouse press must move to become a box
const TOUCH_DRAG_PIXELS = 10; // a finger wobbles more

const state = {
  file: null, // kept to upload again if the server has evicted the image
  name: "image",
  imageId: null,
  width: 0,
  height: 0,
  bitmap: null,
  points: [], // [[x, y], ...] in image pixels
  labels: [], // 1 foreground, 0 background
  box: null, // [x0, y0, x1, y1]
  history: [], // earlier {points, labels, box, picked}, for undo
  future: [], // undone ones, for redo (emptied by any new change)
  result: null, // {masks: [rle], scores: [s], chosen: i}
  automatic: null, // records of "segment everything": a layer kept until the next image or run
  picked: null, // {rle, score, index}: a mask of that layer picked as the current object
  job: null, // {id, file}: the "segment everything" job running
  objects: [], // kept objects: {points, labels, box, picked, result, colour}
  editing: -1, // the index in `objects` of the object on screen being edited; -1: a new one
  opening: null, // {file, xhr, before, timer}: the image being uploaded and encoded
  hover: null, // {rle}: the preview of the mask under the cursor, before any prompt
  hoverWanted: null, // [x, y]: where the cursor is, asked for next
  hoverAbort: null, // the AbortController of the preview request in flight (one at a time)
  hoverDrawn: 0, // previews drawn so far
  drag: null, // {x0, y0, x1, y1, sx, sy, moved, button} while the mouse is down
  overlay: null, // the drawn masks as a canvas, with what they were drawn from
  seq: 0, // the latest prediction request; older answers are dropped
  scale: 1, // view pixels per image pixel
  timings: [], // {server, drawn} ms from the click: the answer in, the mask on screen
  maxUploadBytes: Infinity,
};

// ---------------------------------------------------------------- server

async function api(path, { body, form, method = "POST" } = {}, retry = true) {
  const init = { method };
  if (method !== "POST") init.body = undefined;
  else if (form) init.body = form;
  else {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body || {});
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new Error("the server did not answer (is `sam-jax serve` still running?)");
  }
  if (response.status === 404 && retry && state.file && path.startsWith("/api/images/")) {
    // Evicted from the server's cache: upload the same file again, then retry once, unless
    // another image was opened meanwhile (its answer would not be this one's).
    const file = state.file;
    const info = await upload(file);
    if (state.file !== file) throw new Error("another image was opened");
    state.imageId = info.image_id;
    return api(path.replace(/\/api\/images\/[^/]+/, `/api/images/${info.image_id}`), { body, form }, false);
  }
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function megabytes(n) {
  const mb = n / 2 ** 20;
  return `${mb.toFixed(mb < 10 ? 1 : 0)} MB`;
}

function checkSize(file) {
  if (file.size > state.maxUploadBytes) {
    throw new Error(`the file is larger than the server accepts (${megabytes(state.maxUploadBytes)})`);
  }
}

// Uploads a file; the caller decides what of the page changes (nothing, if anything fails).
async function upload(file) {
  checkSize(file);
  const form = new FormData();
  form.append("file", file, "upload");
  return api("/api/images", { form });
}

// ---------------------------------------------------------------- masks

// COCO compressed RLE counts (pycocotools rleFrString): 5 bits a character, deltas after the second count.
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// A mask sampled at ow x oh pixels, each taking the mask's value at its centre (the nearest
// pixel): exactly the mask when ow x oh is its size. The runs are walked once, and only the
// columns between the first and the last foreground pixel are visited, so the cost follows
// the size drawn and the object, not the photo. Returns the row-major 0/1 array and the box
// (x0, y0, x1, y1, inclusive; empty when x1 < x0) of its foreground.
function sampleMask(rle, ow, oh) {
  const [h, w] = rle.size;
  const counts = rleCounts(rle.counts);
  const n = counts.length;
  const starts = new Float64Array(n + 1); // run r covers [starts[r], starts[r + 1]), zeros first
  for (let r = 0; r < n; r += 1) starts[r + 1] = starts[r] + counts[r];
  const mask = new Uint8Array(ow * oh);
  const out = { mask, x0: ow, y0: oh, x1: -1, y1: -1 };
  let first = -1;
  let last = -1;
  for (let r = 1; r < n; r += 2) {
    if (!counts[r]) continue;
    if (first < 0) first = starts[r];
    last = starts[r + 1] - 1;
  }
  if (first < 0) return out;
  const rowOf = new Float64Array(oh);
  for (let oy = 0; oy < oh; oy += 1) rowOf[oy] = Math.min(h - 1, Math.floor(((oy + 0.5) * h) / oh));
  const ox0 = Math.max(0, Math.floor((Math.floor(first / h) * ow) / w) - 1);
  const ox1 = Math.min(ow - 1, Math.ceil(((Math.floor(last / h) + 1) * ow) / w));
  let r = 0;
  for (let ox = ox0; ox <= ox1; ox += 1) {
    const base = Math.min(w - 1, Math.floor(((ox + 0.5) * w) / ow)) * h;
    if (starts[r + 1] <= base) { // jump to the run holding the column's first pixel
      let lo = r;
      let hi = n - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= base) lo = mid;
        else hi = mid - 1;
      }
      r = lo;
    }
    for (let oy = 0; oy < oh; oy += 1) {
      const q = base + rowOf[oy];
      while (starts[r + 1] <= q) r += 1;
      if (r & 1) {
        mask[oy * ow + ox] = 1;
        if (ox < out.x0) out.x0 = ox;
        if (ox > out.x1) out.x1 = ox;
        if (oy < out.y0) out.y0 = oy;
        if (oy > out.y1) out.y1 = oy;
      }
    }
  }
  return out;
}

// Paints a sampled mask into RGBA pixels (w x h): its inside in `fill` at `alpha`, and, when
// `edge` is given, its inner border `thickness` pixels wide in `edge`, opaque (so the mask
// stays visible on any colour). Only the mask's box is visited.
function paintMask(sampled, w, h, rgba, fill, alpha, edge = null, thickness = 0) {
  const { mask } = sampled;
  const outside = (x, y) => x >= 0 && y >= 0 && x < w && y < h && !mask[y * w + x];
  for (let y = sampled.y0; y <= sampled.y1; y += 1) {
    for (let x = sampled.x0; x <= sampled.x1; x += 1) {
      if (!mask[y * w + x]) continue;
      let border = false;
      for (let d = 1; d <= thickness && !border; d += 1) {
        border = outside(x - d, y) || outside(x + d, y) || outside(x, y - d) || outside(x, y + d);
      }
      const [colour, a] = border ? [edge, 255] : [fill, alpha];
      const o = (y * w + x) * 4;
      rgba[o] = colour[0];
      rgba[o + 1] = colour[1];
      rgba[o + 2] = colour[2];
      rgba[o + 3] = a;
    }
  }
}

// The masks on screen with their colours: the "segment everything" layer (largest first,
// when shown), then the current object on top, the chosen candidate or the mask picked.
function currentMasks() {
  const masks = [];
  state.objects.forEach((o, i) => {
    if (i !== state.editing && o.result) masks.push({ rle: o.result.masks[o.result.chosen], colour: o.colour, edge: o.colour });
  });
  if (state.automatic && $("show-layer").checked) {
    const order = state.automatic.map((r, i) => [r, i]).sort((a, b) => b[0].area - a[0].area);
    for (const [r, i] of order) {
      const colour = PALETTE[i % PALETTE.length];
      masks.push({ rle: r.segmentation, colour, edge: colour });
    }
  }
  if (state.result && state.result.masks.length) {
    masks.push({ rle: state.result.masks[state.result.chosen], colour: MASK_COLOUR, edge: [255, 255, 255] });
  }
  return masks;
}

// The hover preview, drawn lighter than a kept mask and not counted as one.
function previewMasks() {
  return state.hover ? [{ rle: state.hover.rle, colour: MASK_COLOUR, edge: MASK_COLOUR, alpha: 80 }] : [];
}

// Whether the image pixel (x, y) is inside an RLE mask: its runs walked up to that pixel.
function maskHas(rle, x, y) {
  const [h] = rle.size;
  const q = Math.round(x) * h + Math.round(y);
  const counts = rleCounts(rle.counts);
  let end = 0;
  for (let r = 0; r < counts.length; r += 1) {
    end += counts[r];
    if (q < end) return (r & 1) === 1;
  }
  return false;
}

// The smallest mask of the layer under the image pixel (x, y), as its index, or -1.
function layerMaskAt(x, y) {
  if (!state.automatic || !$("show-layer").checked) return -1;
  let found = -1;
  state.automatic.forEach((r, i) => {
    const [bx, by, bw, bh] = r.bbox;
    if (x < bx - 1 || y < by - 1 || x > bx + bw || y > by + bh) return;
    if ((found < 0 || r.area < state.automatic[found].area) && maskHas(r.segmentation, x, y)) found = i;
  });
  return found;
}

// A canvas of w x h pixels with `masks` painted: translucent with borders for the view (at
// display resolution), opaque on black without borders for the PNG download (at the image's).
function maskCanvas(masks, forDownload, w, h) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const c = canvas.getContext("2d");
  const pixels = c.createImageData(w, h);
  if (forDownload) for (let o = 3; o < pixels.data.length; o += 4) pixels.data[o] = 255;
  const thickness = Math.max(2, Math.round(Math.max(w, h) / 250));
  for (const m of masks) {
    const sampled = sampleMask(m.rle, w, h);
    if (forDownload) paintMask(sampled, w, h, pixels.data, m.colour, 255);
    else paintMask(sampled, w, h, pixels.data, m.colour, m.alpha || 130, m.edge, thickness);
  }
  c.putImageData(pixels, 0, 0);
  return canvas;
}

// ---------------------------------------------------------------- drawing

// The view is drawn at display resolution (`state.scale` of the image's pixels; 1 for images
// no larger than the screen), so painting a mask costs what the screen shows, not the photo.
function render() {
  if (!state.bitmap) return;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, view.width, view.height);
  ctx.drawImage(state.bitmap, 0, 0, view.width, view.height);
  // The mask layer is rebuilt only when the masks change, not on every frame of a drag.
  const key = [state.result, state.result && state.result.chosen, state.automatic, $("show-layer").checked, state.hover,
    state.objects.length, state.editing];
  if (!state.overlay || state.overlay.key.some((k, i) => k !== key[i])) {
    const masks = currentMasks();
    const all = previewMasks().concat(masks);
    const canvas = all.length ? maskCanvas(all, false, view.width, view.height) : null;
    state.overlay = { key, canvas, count: masks.length };
  }
  if (state.overlay.canvas) ctx.drawImage(state.overlay.canvas, 0, 0);
  view.dataset.masks = String(state.overlay.count);
  view.dataset.hover = state.hover ? "1" : "0";
  ctx.setTransform(state.scale, 0, 0, state.scale, 0, 0); // prompts in image pixels

  const unit = Math.max(3, Math.round(Math.max(state.width, state.height) / 120));
  const dragging = state.drag && state.drag.moved;
  const box = dragging ? [state.drag.x0, state.drag.y0, state.drag.x1, state.drag.y1] : state.box;
  if (box) {
    ctx.lineWidth = Math.max(2, unit / 2);
    ctx.strokeStyle = "#ffffff";
    ctx.setLineDash(dragging ? [unit * 2, unit] : []);
    ctx.strokeRect(box[0] + 0.5, box[1] + 0.5, box[2] - box[0], box[3] - box[1]);
    ctx.setLineDash([]);
  }
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x + 0.5, y + 0.5, unit * 1.5, 0, 2 * Math.PI);
    ctx.fillStyle = state.labels[i] === 1 ? "#16a34a" : "#dc2626";
    ctx.fill();
    ctx.lineWidth = Math.max(1, unit / 2);
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
  });
}

function showCandidates() {
  const list = $("candidates");
  list.replaceChildren();
  list.hidden = !$("show-candidates").checked || !state.result || state.result.picked !== undefined;
  if (list.hidden) return;
  state.result.scores.forEach((score, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `Mask ${i + 1}: score ${score.toFixed(3)}`;
    b.className = i === state.result.chosen ? "chosen" : "";
    b.addEventListener("click", () => {
      state.result.chosen = i;
      status(`mask ${i + 1} · score ${score.toFixed(3)}`); // the one drawn, not the best
      showCandidates();
      render();
    });
    list.append(b);
  });
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// ---------------------------------------------------------------- prompting

// Asks for the mask of the prompt on screen. `t0` is when the user acted (performance.now()).
async function predict(t0 = performance.now()) {
  const seq = ++state.seq;
  if (!state.points.length && !state.box) {
    // No prompt: the current object is the mask picked from the layer, if any.
    const p = state.picked;
    state.result = p ? { masks: [p.rle], scores: [p.score], chosen: 0, picked: p.index, prompt: snapshot() } : null;
    showCandidates();
    render();
    status(p ? `mask ${p.index + 1} of ${state.automatic.length} picked · predicted IoU ${p.score.toFixed(3)}` : "");
    return;
  }
  if (!state.imageId) { // still encoding: drawn now, sent when it is done
    state.result = null;
    showCandidates();
    render();
    return;
  }
  const single = state.points.length === 1 && !state.box;
  const body = {
    points: state.points,
    labels: state.labels,
    box: state.box,
    // As the reference demo: three candidates for one click, one mask once the prompt is clear.
    multimask: $("show-candidates").checked || single,
  };
  const file = state.file;
  const asked = snapshot(); // kept with the mask, so an object kept meanwhile pairs them right
  try {
    const result = await api(`/api/images/${state.imageId}/predict`, { body });
    // Shown only for the prompt and image on screen: a newer prompt or image drops it.
    if (seq !== state.seq || file !== state.file) return;
    const server = performance.now() - t0;
    const best = result.scores.indexOf(Math.max(...result.scores));
    state.result = { ...result, chosen: best, prompt: asked };
    showCandidates();
    render();
    // The next frame is the first with the mask on screen.
    requestAnimationFrame(() => {
      const drawn = performance.now() - t0;
      state.timings.push({ server, drawn });
      view.dataset.drawn = String(state.timings.length);
      if (seq === state.seq) status(`score ${result.scores[best].toFixed(3)} · drawn ${Math.round(drawn)} ms after the click`);
    });
    return;
  } catch (e) {
    if (seq !== state.seq || file !== state.file) return;
    state.result = null; // the mask of an earlier prompt would not match the points on screen
    status(`no mask for this prompt: ${e.message}`, true);
  }
  showCandidates();
  render();
}

function snapshot() {
  return { points: state.points.slice(), labels: state.labels.slice(), box: state.box, picked: state.picked };
}

function pushHistory() {
  state.history.push(snapshot());
  state.future = [];
}

// Image coordinates of a mouse event, as the model takes them: x = 0 is the centre of the first pixel.
function imagePoint(event) {
  const r = view.getBoundingClientRect();
  const x = ((event.clientX - r.left) * state.width) / r.width - 0.5;
  const y = ((event.clientY - r.top) * state.height) / r.height - 0.5;
  return [Math.min(state.width - 1, Math.max(0, x)), Math.min(state.height - 1, Math.max(0, y))];
}

// Pointer events: a mouse, a pen and a finger alike. A press that moves draws a box; one
// that does not adds a point (or picks a mask of the "segment everything" layer).
view.addEventListener("contextmenu", (e) => e.preventDefault());
view.addEventListener("pointerdown", (e) => {
  if (!state.bitmap || view.hidden || (e.button !== 0 && e.button !== 2) || !e.isPrimary) return;
  const [x, y] = imagePoint(e);
  const slack = e.pointerType === "touch" ? TOUCH_DRAG_PIXELS : DRAG_PIXELS;
  state.drag = { x0: x, y0: y, x1: x, y1: y, sx: e.clientX, sy: e.clientY, moved: false, button: e.button, slack, id: e.pointerId };
  view.setPointerCapture(e.pointerId); // the drag follows the pointer off the image
  dropHover();
  e.preventDefault(); // no text selection or focus change by the press itself; so, by hand:
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
});
view.addEventListener("pointermove", (e) => {
  const d = state.drag;
  if (!d || d.id !== e.pointerId || d.button !== 0) return;
  if (Math.hypot(e.clientX - d.sx, e.clientY - d.sy) >= d.slack) d.moved = true;
  [d.x1, d.y1] = imagePoint(e);
  if (d.moved) render();
});
view.addEventListener("pointercancel", () => cancelDrag());
view.addEventListener("pointerup", (e) => {
  const d = state.drag;
  if (!d || d.id !== e.pointerId) return;
  const t0 = performance.now();
  state.drag = null;
  pushHistory();
  const label = d.button === 2 ? 0 : Number($("mode-bg").checked ? 0 : 1);
  const pick = !d.moved && label === 1 ? layerMaskAt(d.x0, d.y0) : -1;
  if (pick >= 0) { // a click on a mask of the layer picks it as the current object
    const r = state.automatic[pick];
    Object.assign(state, { points: [], labels: [], box: null, picked: { rle: r.segmentation, score: r.predicted_iou, index: pick } });
  } else if (d.moved) {
    state.picked = null;
    state.box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
  } else {
    state.picked = null;
    state.points.push([d.x0, d.y0]);
    state.labels.push(label);
  }
  predict(t0);
});

// ---------------------------------------------------------------- hover preview

// A preview is shown only before any prompt, and not over the "segment everything" layer
// (there a click picks a mask).
function hoverActive() {
  return $("hover").checked && state.imageId && !state.drag && !state.points.length && !state.box
    && !state.picked && !(state.automatic && $("show-layer").checked);
}

function dropHover() {
  state.hoverWanted = null;
  if (state.hoverAbort) state.hoverAbort.abort();
  state.hoverAbort = null;
  if (state.hover) {
    state.hover = null;
    render();
  }
}

// The cursor moved: its point is asked for as soon as no preview request is in flight, so the
// previews follow as fast as the server answers, and only the latest point is ever sent.
function wantHover(point) {
  if (!point || !hoverActive()) return dropHover();
  state.hoverWanted = point;
  if (!state.hoverAbort) sendHover();
  return undefined;
}

async function sendHover() {
  const point = state.hoverWanted;
  state.hoverWanted = null;
  const controller = new AbortController();
  state.hoverAbort = controller;
  const { file, imageId } = state;
  try {
    // "?preview" marks it in logs and tests; the server reads no query.
    const response = await fetch(`/api/images/${imageId}/predict?preview`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ points: [point], labels: [1], multimask: true }),
      signal: controller.signal,
    });
    const data = response.ok ? await response.json() : null;
    // Dropped when aborted, when the image changed, or when a prompt was made meanwhile.
    if (data && state.hoverAbort === controller && file === state.file && hoverActive()) {
      const best = data.scores.indexOf(Math.max(...data.scores));
      state.hover = { rle: data.masks[best] };
      state.hoverDrawn += 1;
      render();
    }
  } catch {
    // aborted, or the server gone: a preview is best effort (a click says what went wrong)
  }
  if (state.hoverAbort !== controller) return;
  state.hoverAbort = null;
  if (state.hoverWanted) sendHover();
}

view.addEventListener("pointermove", (e) => {
  if (e.pointerType === "mouse" && !e.buttons && !state.drag) wantHover(imagePoint(e));
});
view.addEventListener("pointerleave", () => dropHover());
$("hover").addEventListener("change", () => dropHover());

function cancelDrag() {
  if (!state.drag) return false;
  state.drag = null;
  render();
  return true;
}

function restore(snap) {
  Object.assign(state, snap);
  predict();
}

function undo() {
  const last = state.history.pop();
  if (!last) return;
  state.future.push(snapshot());
  restore(last);
}

function redo() {
  const next = state.future.pop();
  if (!next) return;
  state.history.push(snapshot());
  restore(next);
}

function clear() {
  state.points = [];
  state.labels = [];
  state.box = null;
  state.picked = null;
  state.history = [];
  state.future = [];
  predict();
}

// Escape: a drag in progress is dropped; otherwise the prompt is cleared (undoable).
function escape() {
  if (cancelDrag()) return;
  if (!state.points.length && !state.box && !state.picked) return;
  pushHistory();
  Object.assign(state, { points: [], labels: [], box: null, picked: null });
  predict();
}

// Delete: the last point goes, else the box, else the picked mask (undoable).
function removeLast() {
  if (!state.points.length && !state.box && !state.picked) return;
  pushHistory();
  if (state.points.length) {
    state.points = state.points.slice(0, -1);
    state.labels = state.labels.slice(0, -1);
  } else if (state.box) state.box = null;
  else state.picked = null;
  predict();
}

$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", clear);
$("show-candidates").addEventListener("change", () => predict());
$("open").addEventListener("click", () => $("file").click());

// Fields that edit text keep their keys (Ctrl+Z in the IoU field undoes its typing).
function editsText(el) {
  if (!el) return false;
  if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
  return el.tagName === "INPUT" && !["checkbox", "radio", "button", "submit", "file"].includes(el.type);
}

window.addEventListener("keydown", (e) => {
  if (editsText(e.target)) return;
  const mod = e.ctrlKey || e.metaKey;
  const key = e.key.toLowerCase();
  let done = true;
  if (mod && key === "z" && !e.shiftKey) undo();
  else if (mod && (key === "y" || (key === "z" && e.shiftKey))) redo();
  else if (e.key === "Escape") escape();
  else if ((e.key === "Delete" || e.key === "Backspace") && !mod) removeLast();
  else if (key === "n" && !mod && !e.altKey) newObject();
  else done = false;
  if (done) e.preventDefault();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showJob(running, fraction = 0) {
  $("everything").disabled = running;
  $("cancel-everything").hidden = !running;
  $("everything-progress").hidden = !running;
  $("everything-progress").value = fraction;
}

// "Segment everything" as a job on the server: its progress polled and shown, Cancel stops it
// there, and its masks become a layer that stays until the next run or image.
async function segmentEverything() {
  if (!state.imageId || state.job) return;
  const options = {
    pred_iou_thresh: Number($("pred-iou").value),
    stability_score_thresh: Number($("stability").value),
    points_per_side: Number($("points-per-side").value),
  };
  const t0 = performance.now();
  const file = state.file;
  const job = { id: null, file };
  state.job = job;
  showJob(true, 0);
  status("Segmenting everything…");
  try {
    const started = await api(`/api/images/${state.imageId}/automatic/jobs`, { body: options });
    job.id = started.job_id;
    if (state.job !== job) return void cancelOnServer(job); // cancelled while it started
    for (;;) {
      const report = await api(`/api/jobs/${job.id}`, { method: "GET" });
      if (state.job !== job) return undefined; // cancelled, or another image opened
      if (report.state === "failed") throw new Error(report.error);
      if (report.state === "cancelled") return void status("Segment everything was cancelled.");
      if (report.state === "done") {
        if (file !== state.file) throw new Error("another image was opened; its masks were not kept");
        state.seq += 1; // drop any prediction still on its way
        Object.assign(state, { points: [], labels: [], box: null, result: null, picked: null, automatic: report.records });
        $("show-layer").checked = true;
        const seconds = ((performance.now() - t0) / 1000).toFixed(1);
        status(`${report.records.length} masks · ${seconds} s · click one to pick it`);
        showCandidates();
        render();
        return undefined;
      }
      $("everything-progress").value = report.progress;
      status(`Segmenting everything… ${Math.round(report.progress * 100)}%`);
      await sleep(150);
    }
  } catch (e) {
    if (state.job === job) status(e.message, true);
    return undefined;
  } finally {
    if (state.job === job) {
      state.job = null;
      showJob(false);
    }
  }
}

function cancelOnServer(job) {
  if (job.id) api(`/api/jobs/${job.id}`, { method: "DELETE" }).catch(() => {});
}

// Stops the running job: the page forgets it at once, the server stops at its next batch.
function cancelEverything(why = "Segment everything was cancelled.") {
  const job = state.job;
  if (!job) return;
  state.job = null;
  showJob(false);
  cancelOnServer(job);
  if (why) status(why);
}

$("everything").addEventListener("click", segmentEverything);
$("cancel-everything").addEventListener("click", () => cancelEverything());
$("show-layer").addEventListener("change", () => {
  if (!$("show-layer").checked && state.picked) state.picked = null; // hidden: nothing picked from it
  predict();
});

// ---------------------------------------------------------------- objects

// The object on screen, as kept in the list: its mask and the prompt that mask answered
// (a newer prompt still waiting for its answer is not kept with an older mask).
function liveObject(colour) {
  return { ...(state.result.prompt || snapshot()), result: state.result, colour };
}

// Keeps the object on screen in the list (when it has a mask) and returns whether it did.
function keepLive() {
  if (!state.result || !state.result.masks.length) return false;
  if (state.editing >= 0) state.objects[state.editing] = liveObject(state.objects[state.editing].colour);
  else state.objects.push(liveObject(PALETTE[state.objects.length % PALETTE.length]));
  return true;
}

// Loads object i (or a new, empty one for -1) as the one on screen; its prompt starts afresh,
// so a box drawn for a new object never merges with another object's clicks.
function edit(i) {
  state.seq += 1; // an answer for the object left behind is not this one's
  const o = i >= 0 ? state.objects[i] : { points: [], labels: [], box: null, picked: null, result: null };
  Object.assign(state, {
    editing: i, points: o.points.slice(), labels: o.labels.slice(), box: o.box, picked: o.picked,
    result: o.result, history: [], future: [],
  });
  showObjects();
  showCandidates();
  render();
}

function newObject() {
  if (keepLive() || state.editing >= 0) edit(-1);
}

function removeObject(i) {
  state.objects.splice(i, 1);
  if (state.editing === i) edit(-1);
  else {
    if (state.editing > i) state.editing -= 1;
    showObjects();
    render();
  }
}

function showObjects() {
  const list = $("objects");
  list.replaceChildren();
  state.objects.forEach((o, i) => {
    const li = document.createElement("li");
    li.className = i === state.editing ? "editing" : "";
    const pick = document.createElement("button");
    pick.type = "button";
    pick.className = "pick";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${o.colour.join(",")})`;
    const score = o.result ? o.result.scores[o.result.chosen].toFixed(3) : "-";
    pick.append(swatch, `Object ${i + 1} · score ${score}`);
    pick.title = "edit this object";
    pick.addEventListener("click", () => {
      keepLive();
      edit(i);
    });
    const cut = document.createElement("button");
    cut.type = "button";
    cut.textContent = "Cut-out";
    cut.title = "download this object cut out of the image (PNG with transparency)";
    cut.addEventListener("click", () => downloadCutout(o, i));
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "×";
    del.title = "remove this object";
    del.setAttribute("aria-label", `remove object ${i + 1}`);
    del.addEventListener("click", () => removeObject(i));
    li.append(pick, cut, del);
    list.append(li);
  });
}

// Every object's record, the one on screen included (kept first, so it is listed too).
function allObjects() {
  keepLive();
  showObjects();
  return state.objects.filter((o) => o.result);
}

function objectRecord(o, i) {
  const k = o.result.chosen;
  return {
    id: i + 1, segmentation: o.result.masks[k], predicted_iou: o.result.scores[k],
    point_coords: o.points, point_labels: o.labels, box: o.box, colour: o.colour,
  };
}

// The image at its full size, decoded again from the file (the view may hold fewer pixels).
async function fullImage() {
  const bitmap = await createImageBitmap(state.file, { imageOrientation: "from-image" });
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, state.width, state.height);
  bitmap.close();
  return canvas;
}

// The object cut out of the image: its box's pixels, transparent outside the mask.
async function downloadCutout(o, i) {
  if (!o.result) return status("This object has no mask yet.", true);
  const { width: w, height: h } = state;
  const m = sampleMask(o.result.masks[o.result.chosen], w, h);
  if (m.x1 < m.x0) return status("This object's mask is empty.", true);
  const image = (await fullImage()).getContext("2d").getImageData(m.x0, m.y0, m.x1 - m.x0 + 1, m.y1 - m.y0 + 1);
  const cw = image.width;
  for (let y = 0; y < image.height; y += 1) {
    for (let x = 0; x < cw; x += 1) {
      if (!m.mask[(y + m.y0) * w + x + m.x0]) image.data[(y * cw + x) * 4 + 3] = 0;
    }
  }
  const canvas = document.createElement("canvas");
  canvas.width = cw;
  canvas.height = image.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
  canvas.toBlob((blob) => download(blob, `${state.name}-object-${i + 1}.png`), "image/png");
  return undefined;
}

$("new-object").addEventListener("click", newObject);

$("download-objects-json").addEventListener("click", () => {
  const objects = allObjects();
  if (!objects.length) return status("No objects to download yet.", true);
  const records = objects.map(objectRecord);
  download(new Blob([JSON.stringify(records)], { type: "application/json" }), `${state.name}-objects.json`);
  return undefined;
});

// One PNG, each pixel the number of the object there (1, 2, ...; 0: none; a later object
// over an earlier one), as grey levels.
$("download-labels").addEventListener("click", () => {
  const objects = allObjects();
  if (!objects.length) return status("No objects to download yet.", true);
  if (objects.length > 255) return status("A label PNG holds at most 255 objects.", true);
  const masks = objects.map((o, i) => ({ rle: o.result.masks[o.result.chosen], colour: [i + 1, i + 1, i + 1] }));
  maskCanvas(masks, true, state.width, state.height).toBlob((blob) => download(blob, `${state.name}-labels.png`), "image/png");
  return undefined;
});

// ---------------------------------------------------------------- downloads

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// What the downloads hold: the current object when there is one, else the layer's masks.
function layerOnly() {
  return !state.result && state.automatic && state.automatic.length > 0;
}

$("download-png").addEventListener("click", () => {
  const masks = currentMasks();
  if (!masks.length) return status("No masks to download yet.", true);
  // One mask: white on black; automatic masks: each in its colour on black.
  const coloured = layerOnly() ? masks : [{ ...masks[masks.length - 1], colour: [255, 255, 255] }];
  maskCanvas(coloured, true, state.width, state.height).toBlob((blob) => download(blob, `${state.name}-masks.png`), "image/png");
});

$("download-json").addEventListener("click", () => {
  let records;
  if (layerOnly()) records = state.automatic;
  else if (state.result) {
    const i = state.result.chosen;
    records = [{
      segmentation: state.result.masks[i],
      predicted_iou: state.result.scores[i],
      point_coords: state.points,
      point_labels: state.labels,
      box: state.box,
    }];
  } else return status("No masks to download yet.", true);
  download(new Blob([JSON.stringify(records)], { type: "application/json" }), `${state.name}-masks.json`);
});

// ---------------------------------------------------------------- opening images

// Uploads with XMLHttpRequest, whose upload reports progress (fetch's does not); `opening.xhr`
// lets Cancel abort it.
function uploadWithProgress(file, opening, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    opening.xhr = xhr;
    xhr.open("POST", "/api/images");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.upload.onload = () => onProgress(1);
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300 && data) resolve(data);
      else reject(new Error((data && data.error) || `${xhr.status} ${xhr.statusText}`));
    };
    xhr.onerror = () => reject(new Error("the server did not answer (is `sam-jax serve` still running?)"));
    xhr.onabort = () => reject(new Error("cancelled"));
    const form = new FormData();
    form.append("file", file, "upload");
    xhr.send(form);
  });
}

const PAGE_FIELDS = ["file", "bitmap", "name", "imageId", "width", "height", "scale", "points", "labels", "box",
  "history", "future", "result", "automatic", "picked", "objects", "editing"];

// What the page shows, to go back to when an opening fails or is cancelled.
function pageState() {
  const saved = { view: [view.width, view.height, view.hidden, view.style.getPropertyValue("--aspect")] };
  for (const k of PAGE_FIELDS) saved[k] = state[k];
  return saved;
}

function showPage(saved) {
  for (const k of PAGE_FIELDS) state[k] = saved[k];
  [view.width, view.height, view.hidden] = saved.view;
  view.style.setProperty("--aspect", saved.view[3]);
  $("placeholder").hidden = !view.hidden;
  Object.assign(state, { overlay: null, drag: null });
  state.seq += 1;
  showObjects();
  showCandidates();
  render();
}

function showOpening(opening, fraction) {
  $("cancel-open").hidden = !opening;
  $("open-progress").hidden = !opening;
  if (fraction === null) $("open-progress").removeAttribute("value"); // encoding: no fraction to show
  else $("open-progress").value = fraction;
}

// Opens a file. The browser decodes it first: if it cannot, nothing changes. Then the image is
// shown while it uploads (with its progress) and the server encodes it; clicks meanwhile are
// drawn and sent once it is encoded. If the server refuses it, or Cancel is pressed, the page
// goes back to the image, prompt and masks it showed before.
async function open(file) {
  let bitmap;
  try {
    checkSize(file);
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      throw new Error(`this browser cannot display ${file.name}; try a PNG or JPEG (the page is unchanged)`);
    }
  } catch (e) {
    status(e.message, true);
    return;
  }
  cancelOpening(null); // an earlier opening still under way is dropped for this one
  const before = pageState();
  const { width, height } = bitmap;
  // Display resolution: no more pixels than the screen has along the image's longer side.
  const screenSide = Math.max(window.screen.width, window.screen.height, 1) * (window.devicePixelRatio || 1);
  const scale = Math.min(1, screenSide / Math.max(width, height));
  const dw = Math.max(1, Math.round(width * scale));
  const dh = Math.max(1, Math.round(height * scale));
  if (scale < 1) { // resized once here, so no frame draws the full photo
    const full = bitmap;
    bitmap = await createImageBitmap(full, { resizeWidth: dw, resizeHeight: dh, resizeQuality: "medium" });
    full.close();
  }
  cancelEverything(null); // its masks would be another image's
  dropHover();
  Object.assign(state, {
    file, bitmap, name: file.name.replace(/\.[^.]*$/, "") || "image", imageId: null, width, height, scale,
    points: [], labels: [], box: null, history: [], future: [], result: null, automatic: null, picked: null,
    overlay: null, drag: null, objects: [], editing: -1,
  });
  state.seq += 1;
  view.style.setProperty("--aspect", String(width / height));
  view.width = dw;
  view.height = dh;
  view.hidden = false;
  $("placeholder").hidden = true;
  showObjects();
  showCandidates();
  render();

  const opening = { file, xhr: null, before, timer: null };
  state.opening = opening;
  showOpening(opening, 0);
  status("Uploading… 0%");
  const t0 = performance.now();
  const encoding = () => {
    if ($("status").className !== "error") {
      status(`Encoding… ${Math.round((performance.now() - t0) / 1000)} s (clicks are kept and sent when it is done)`);
    }
  };
  try {
    const info = await uploadWithProgress(file, opening, (fraction) => {
      if (state.opening !== opening) return;
      if (fraction < 1) {
        showOpening(opening, fraction);
        if ($("status").className !== "error") status(`Uploading… ${Math.round(fraction * 100)}%`);
      } else if (!opening.timer) {
        showOpening(opening, null);
        encoding();
        opening.timer = setInterval(encoding, 1000);
      }
    });
    if (state.opening !== opening) return;
    if (info.width !== width || info.height !== height) {
      throw new Error(`the server read ${info.width} × ${info.height} pixels, the browser ${width} × ${height}`);
    }
    state.imageId = info.image_id;
    // A file refused meanwhile (too large, unreadable) keeps its message on the status line.
    if ($("status").className !== "error") status(`${width} × ${height}: click the image`);
    if (state.points.length || state.box) predict(); // the clicks made while it was encoded
  } catch (e) {
    if (state.opening !== opening) return;
    showPage(before);
    status(`${e.message} (the page is as it was)`, true);
  } finally {
    clearInterval(opening.timer);
    if (state.opening === opening) {
      state.opening = null;
      showOpening(null, 0);
    }
  }
}

// Cancel during an upload or an encode: the request is aborted (the server may still finish
// the encoding, for a later opening of the same file) and the page goes back to what it showed.
function cancelOpening(why = "Opening cancelled; the page is as it was.") {
  const opening = state.opening;
  if (!opening) return;
  state.opening = null;
  clearInterval(opening.timer);
  showOpening(null, 0);
  if (opening.xhr) opening.xhr.abort();
  if (why) {
    showPage(opening.before);
    status(why);
  }
}

$("cancel-open").addEventListener("click", () => cancelOpening());

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) open(e.target.files[0]);
  e.target.value = "";
});
window.addEventListener("dragover", (e) => {
  e.preventDefault();
  document.body.classList.add("dragging");
});
window.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
window.addEventListener("drop", (e) => {
  e.preventDefault();
  document.body.classList.remove("dragging");
  if (e.dataTransfer.files.length) open(e.dataTransfer.files[0]);
});

// What the model is for, said where the user looks first: a toy gives poor masks on photos,
// a medical model wants boxes, and an unknown one is said to be unknown.
function modelNote(info) {
  const what = info.trained_for || "";
  let text;
  if (/synthetic/i.test(what)) {
    text = `${info.model} is a toy trained on synthetic shapes: expect fragmentary masks on photos. `
      + "For real images, serve a trained model (sam-jax serve --checkpoint ...).";
  } else if (/medical/i.test(what)) {
    text = `${info.model} is made for ${what}: draw a box around the structure for the best masks.`;
  } else if (what) {
    text = `${info.model} was trained on ${what}.`;
  } else {
    text = `What ${info.model} was trained on is not recorded in its checkpoint.`;
  }
  $("model-note").textContent = text;
  $("model-note").className = /synthetic/i.test(what) ? "note warn" : "note";
  $("model-note").hidden = false;
}

fetch("/healthz")
  .then((r) => r.json())
  .then((info) => {
    $("model").textContent = info.trained_for ? `model: ${info.model}, trained on ${info.trained_for}` : `model: ${info.model}`;
    modelNote(info);
    state.maxUploadBytes = info.max_upload_bytes || Infinity;
    const d = info.automatic_defaults || {};
    if (d.pred_iou_thresh !== undefined) $("pred-iou").value = d.pred_iou_thresh;
    if (d.stability_score_thresh !== undefined) $("stability").value = d.stability_score_thresh;
    if (d.points_per_side !== undefined) $("points-per-side").value = d.points_per_side;
  })
  .catch(() => status("The server does not answer.", true));
