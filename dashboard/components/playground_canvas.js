// The Playground's live view: every member's decision regions, boundary, gradient arrows
// and the attack path, the vote, and the training curves, drawn on one <canvas>.
//
// Data arrive as one binary message (dashboard/components/playground_canvas.py `pack`):
// a uint32 header length, a JSON header, then typed arrays at 4-byte aligned offsets; in
// play mode several such frames in one message ("PGF1", a count, then length + frame each),
// which this code queues and draws one every header.frame_ms on its own timer, so the
// frame rate does not depend on how often the page reruns. A frame that is not "playing"
// (Pause, Step, Reset, a paused page) is drawn at once and empties the queue.
// Drawing is a few milliseconds (no DOM rebuilt, no plotting library): a new epoch only
// repaints the canvas. A click on a member or vote plot sends its data coordinates back
// (trigger "click"), so the page can pick the nearest training point.

const CLASS = ["#f59322", "#0877bd", "#2ca02c", "#9467bd", "#d62728"];
const PALE = ["#fbd9ad", "#a9d3ee", "#b7e2b1", "#d5c6e8", "#f2b4b4"];
const VERDICT_COLOR = { "holds": "#1a7f37", "fooled": "#cf222e", "already wrong": "#6e7781" };
const FONT = '"Source Sans", "Source Sans Pro", sans-serif';
const TITLE_PX = 15, SMALL_PX = 14, TITLE_H = 44, ROW_H = 26, GAP = 14, MIN_PANEL = 165;
const STATE = new WeakMap();  // per mounted element: canvas, last payload, layout

function hexRgb(h) { return [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)); }

// p(class 1) in 1/255 steps -> orange / white / blue at opacity 0.55 on white
const BINARY_LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3), a = hexRgb(CLASS[0]), b = hexRgb(CLASS[1]);
  for (let v = 0; v < 256; v++) {
    const t = v / 255, c = t < 0.5 ? a.map(x => x + (255 - x) * (t / 0.5))
                                  : b.map(x => 255 + (x - 255) * ((t - 0.5) / 0.5));
    for (let k = 0; k < 3; k++) lut[3 * v + k] = 255 + (c[k] - 255) * 0.55;
  }
  return lut;
})();

function unpack(bytes) {
  const buf = bytes.slice();  // own ArrayBuffer at offset 0: typed views need alignment
  const dv = new DataView(buf.buffer);
  const hl = dv.getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(buf.subarray(4, 4 + hl)));
  const base = 4 + hl, arrays = {};
  for (const [name, [off, dtype, shape]] of Object.entries(head.arrays)) {
    const n = shape.reduce((p, q) => p * q, 1), at = base + off;
    arrays[name] = dtype === "float32" ? new Float32Array(buf.buffer, at, n) : new Uint8Array(buf.buffer, at, n);
  }
  return { head, arrays };
}

function unpackAll(bytes) {  // one frame, or a "PGF1" message of several
  if (bytes.length < 8 || bytes[0] !== 80 || bytes[1] !== 71 || bytes[2] !== 70 || bytes[3] !== 49)
    return [unpack(bytes)];
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const frames = [];
  for (let i = 0, n = dv.getUint32(4, true), at = 8; i < n; i++) {
    const len = dv.getUint32(at, true);
    frames.push(unpack(bytes.subarray(at + 4, at + 4 + len)));
    at += 4 + len;
  }
  return frames;
}

const MAX_QUEUE = 24;  // a browser slower than training drops the oldest queued epochs
const CATCH_UP = 8;   // more queued than this: draw at twice the pace until caught up

function receive(st, frames) {
  const last = frames[frames.length - 1];
  if (!last.head.playing) {  // paused: the last frame, now
    st.queue = [];
    if (st.timer) { clearInterval(st.timer); st.timer = null; }
    st.payload = last;
    draw(st);
    return;
  }
  const tail = st.queue.length ? st.queue[st.queue.length - 1] : st.payload;
  const newest = tail ? tail.head.epoch : -1;
  for (const f of frames) if (f.head.epoch > newest) st.queue.push(f);
  if (st.queue.length > MAX_QUEUE) st.queue.splice(0, st.queue.length - MAX_QUEUE);
  if (!st.payload) { st.payload = st.queue.shift() || last; draw(st); }
  const ms = last.head.frame_ms || 100;
  if (!st.timer || st.timerMs !== ms) {  // ticks at half the frame interval
    if (st.timer) clearInterval(st.timer);
    st.timerMs = ms;
    st.lastDraw = 0;
    st.timer = setInterval(() => {
      if (!st.canvas.isConnected) { clearInterval(st.timer); st.timer = null; return; }
      const now = performance.now();
      if (st.queue.length && (now - st.lastDraw >= ms - 2 || st.queue.length > CATCH_UP)) {
        st.payload = st.queue.shift(); st.lastDraw = now; draw(st);
      }
    }, ms / 2);
  }
}

function layout(head, width) {
  const panels = head.runs.map(r => r.members + 2);  // members, vote, curves
  const cols = Math.max(2, Math.min(Math.max(...panels), Math.floor((width + GAP) / (MIN_PANEL + GAP))));
  const size = Math.floor((width - GAP * (cols - 1)) / cols);
  const rows = [];
  let y = 0;
  head.runs.forEach((r, k) => {
    const named = head.runs.length > 1;
    const top = y + (named ? ROW_H : 0);
    const lines = Math.ceil(panels[k] / cols);
    const cells = [];
    for (let i = 0; i < panels[k]; i++) {
      const c = i % cols, l = Math.floor(i / cols);
      cells.push({ x: c * (size + GAP), y: top + l * (size + TITLE_H + GAP), w: size, h: size });
    }
    rows.push({ top: y, named, cells });
    y = top + lines * (size + TITLE_H + GAP);
  });
  return { rows, height: y, size };
}

function toPx(cell, b) {  // data -> canvas pixels inside a panel (below its title)
  const ox = cell.x, oy = cell.y + TITLE_H, sx = cell.w / (b[1] - b[0]), sy = cell.h / (b[3] - b[2]);
  return [(x) => ox + (x - b[0]) * sx, (y) => oy + cell.h - (y - b[2]) * sy];
}

function regionImage(run, arrays, k, i) {
  const n = run.grid, img = new ImageData(n, n), d = img.data;
  const z = arrays[`${k}.r${i}`], conf = arrays[`${k}.c${i}`];
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < n; col++) {
      const src = row * n + col, dst = 4 * ((n - 1 - row) * n + col);  // row 0 is the lowest y
      if (run.classes === 2) {
        const v = z[src];
        d[dst] = BINARY_LUT[3 * v]; d[dst + 1] = BINARY_LUT[3 * v + 1]; d[dst + 2] = BINARY_LUT[3 * v + 2];
      } else {
        const c = hexRgb(PALE[z[src] % PALE.length]), t = conf[src] / 255;
        for (let q = 0; q < 3; q++) d[dst + q] = 255 + (c[q] - 255) * t;
      }
      d[dst + 3] = 255;
    }
  }
  const off = document.createElement("canvas");
  off.width = off.height = n;
  off.getContext("2d").putImageData(img, 0, 0);
  return off;
}

function polyline(ctx, xy, X, Y) {  // (K, 2) interleaved with NaN breaks
  ctx.beginPath();
  let pen = false;
  for (let j = 0; j < xy.length; j += 2) {
    const x = xy[j], y = xy[j + 1];
    if (Number.isNaN(x) || Number.isNaN(y)) { pen = false; continue; }
    if (pen) ctx.lineTo(X(x), Y(y)); else ctx.moveTo(X(x), Y(y));
    pen = true;
  }
  ctx.stroke();
}

function title(ctx, cell, lines, color) {
  ctx.textAlign = "center"; ctx.textBaseline = "alphabetic";
  ctx.fillStyle = "#31333F"; ctx.font = `600 ${TITLE_PX}px ${FONT}`;
  ctx.fillText(lines[0], cell.x + cell.w / 2, cell.y + 17, cell.w);
  if (lines[1]) {
    ctx.fillStyle = color || "#31333F"; ctx.font = `600 ${SMALL_PX}px ${FONT}`;
    ctx.fillText(lines[1], cell.x + cell.w / 2, cell.y + 37, cell.w);
  }
}

function drawPlane(ctx, head, run, arrays, k, i, cell) {
  const b = run.bounds, [X, Y] = toPx(cell, b), n = run.grid;
  ctx.save();
  ctx.beginPath(); ctx.rect(cell.x, cell.y + TITLE_H, cell.w, cell.h); ctx.clip();
  // cells are centred on the grid points: the image reaches half a cell past the range
  const hx = (b[1] - b[0]) / (2 * (n - 1)), hy = (b[3] - b[2]) / (2 * (n - 1));
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(regionImage(run, arrays, k, i), X(b[0] - hx), Y(b[3] + hy), X(b[1] + hx) - X(b[0] - hx),
                Y(b[2] - hy) - Y(b[3] + hy));
  ctx.lineWidth = 2; ctx.strokeStyle = "#111"; polyline(ctx, arrays[`${k}.b${i}`], X, Y);
  const tx = arrays["train.x"], ty = arrays["train.y"];
  for (let j = 0; j < ty.length; j++) {
    ctx.fillStyle = CLASS[ty[j] % CLASS.length];
    ctx.beginPath(); ctx.arc(X(tx[2 * j]), Y(tx[2 * j + 1]), 2.4, 0, 2 * Math.PI); ctx.fill();
  }
  if (i < run.members) {  // loss-gradient arrows of this member, equal length
    const p = arrays["arrows"], g = arrays[`${k}.g${i}`], len = 0.45 * cell.w / Math.sqrt(p.length / 2);
    ctx.strokeStyle = "rgba(40,40,40,0.55)"; ctx.lineWidth = 1; ctx.beginPath();
    for (let j = 0; j < p.length; j += 2) {
      const gx = g[j], gy = -g[j + 1], nrm = Math.hypot(gx, gy);  // canvas y points down
      if (!(nrm > 0)) continue;
      const ux = gx / nrm, uy = gy / nrm, x0 = X(p[j]), y0 = Y(p[j + 1]), x1 = x0 + len * ux, y1 = y0 + len * uy;
      ctx.moveTo(x0, y0); ctx.lineTo(x1, y1);
      ctx.moveTo(x1 - 0.35 * len * ux - 0.2 * len * uy, y1 - 0.35 * len * uy + 0.2 * len * ux); ctx.lineTo(x1, y1);
      ctx.lineTo(x1 - 0.35 * len * ux + 0.2 * len * uy, y1 - 0.35 * len * uy - 0.2 * len * ux);
    }
    ctx.stroke();
  }
  const path = arrays[`${k}.path`];
  if (path && path.length >= 2) {
    ctx.strokeStyle = "#222"; ctx.lineWidth = 2; polyline(ctx, path, X, Y);
    ctx.fillStyle = "#222";
    for (let j = 0; j < path.length; j += 2) { ctx.beginPath(); ctx.arc(X(path[j]), Y(path[j + 1]), 2.5, 0, 7); ctx.fill(); }
    const ex = X(path[path.length - 2]), ey = Y(path[path.length - 1]), v = run.verdicts[i];
    ctx.strokeStyle = v === "fooled" ? "#cf222e" : v === "already wrong" ? "#6e7781" : "#222";
    ctx.lineWidth = 3; ctx.beginPath();
    ctx.moveTo(ex - 6, ey - 6); ctx.lineTo(ex + 6, ey + 6); ctx.moveTo(ex + 6, ey - 6); ctx.lineTo(ex - 6, ey + 6);
    ctx.stroke();
  }
  ctx.restore();
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1; ctx.strokeRect(cell.x + 0.5, cell.y + TITLE_H + 0.5, cell.w - 1, cell.h - 1);
  title(ctx, cell, run.titles[i], VERDICT_COLOR[run.verdicts[i]]);
}

function drawCurves(ctx, run, arrays, k, cell) {
  const h = arrays[`${k}.hist`], E = h.length / 3, last = E ? h[3 * (E - 1)] : 0;
  const xmax = Math.max(10, last), pad = 6, legend = 2 * (SMALL_PX + 4);
  const area = { x: cell.x + 30, y: cell.y + TITLE_H + pad, w: cell.w - 30 - pad, h: cell.h - legend - 2 * pad };
  const X = (e) => area.x + (e / xmax) * area.w, Y = (v) => area.y + (1 - (v + 1) / 2) * area.h;
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1; ctx.strokeRect(area.x + 0.5, area.y + 0.5, area.w, area.h);
  ctx.fillStyle = "#31333F"; ctx.font = `${SMALL_PX}px ${FONT}`; ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of [-1, 0, 1]) {
    ctx.fillText(String(v), area.x - 4, Y(v));
    ctx.strokeStyle = "#eee"; ctx.beginPath(); ctx.moveTo(area.x, Y(v)); ctx.lineTo(area.x + area.w, Y(v)); ctx.stroke();
  }
  ctx.setLineDash([5, 4]); ctx.strokeStyle = "#d62728"; ctx.beginPath();
  ctx.moveTo(area.x, Y(run.floor)); ctx.lineTo(area.x + area.w, Y(run.floor)); ctx.stroke(); ctx.setLineDash([]);
  const series = [[1, "#2ca02c"], [2, "#9467bd"]];
  for (const [col, color] of series) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    let pen = false;
    for (let e = 0; e < E; e++) {
      const v = h[3 * e + col];
      if (Number.isNaN(v)) { pen = false; continue; }
      if (pen) ctx.lineTo(X(h[3 * e]), Y(v)); else ctx.moveTo(X(h[3 * e]), Y(v));
      pen = true;
    }
    ctx.stroke();
  }
  ctx.textAlign = "left"; ctx.textBaseline = "alphabetic"; ctx.font = `${SMALL_PX}px ${FONT}`;
  const ly = area.y + area.h + SMALL_PX + 4;
  ctx.fillStyle = "#2ca02c"; ctx.fillText("— test acc (vote)", cell.x + 4, ly, cell.w - 8);
  ctx.fillStyle = "#9467bd"; ctx.fillText("— R/K", cell.x + 4, ly + SMALL_PX + 4, cell.w / 2);
  ctx.fillStyle = "#d62728"; ctx.fillText("- - floor", cell.x + cell.w / 2, ly + SMALL_PX + 4, cell.w / 2 - 4);
  title(ctx, cell, [`epoch ${last}`, "training so far"], "#31333F");
}

function draw(st) {
  const { canvas, payload } = st;
  if (!payload) return;
  const { head, arrays } = payload;
  const width = Math.max(2 * MIN_PANEL, canvas.parentElement.clientWidth || 800);
  st.width = canvas.parentElement.clientWidth;
  const L = layout(head, width), dpr = window.devicePixelRatio || 1;
  canvas.style.width = `${width}px`; canvas.style.height = `${L.height}px`;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(L.height * dpr)) {
    canvas.width = Math.round(width * dpr); canvas.height = Math.round(L.height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "white"; ctx.fillRect(0, 0, width, L.height);
  head.runs.forEach((run, k) => {
    const row = L.rows[k];
    if (row.named) {
      ctx.fillStyle = "#1a1a1a"; ctx.font = `700 ${TITLE_PX + 2}px ${FONT}`; ctx.textAlign = "left";
      ctx.textBaseline = "alphabetic"; ctx.fillText(run.label, 0, row.top + 19, width);
    }
    for (let i = 0; i <= run.members; i++) drawPlane(ctx, head, run, arrays, k, i, row.cells[i]);
    drawCurves(ctx, run, arrays, k, row.cells[run.members + 1]);
  });
  st.layout = L;
  // for tests and the browser benchmark: where each plot is, in CSS pixels of the canvas
  canvas.parlLayout = { titleH: TITLE_H, rows: L.rows, bounds: head.runs.map(r => r.bounds) };
  canvas.setAttribute("aria-label", head.summary);
  canvas.dataset.epoch = String(head.epoch);
  (window.__pgDraws = window.__pgDraws || []).push([performance.now(), head.epoch]);
}

function onClick(st, ev, setTriggerValue) {
  if (!st.layout || !st.payload) return;
  const r = st.canvas.getBoundingClientRect(), px = ev.clientX - r.left, py = ev.clientY - r.top;
  st.payload.head.runs.forEach((run, k) => {
    st.layout.rows[k].cells.slice(0, run.members + 1).forEach((cell) => {
      const top = cell.y + TITLE_H;
      if (px < cell.x || px > cell.x + cell.w || py < top || py > top + cell.h) return;
      const b = run.bounds;
      setTriggerValue("click", { x: b[0] + (px - cell.x) / cell.w * (b[1] - b[0]),
                                 y: b[2] + (top + cell.h - py) / cell.h * (b[3] - b[2]) });
    });
  });
}

export default function (component) {
  const { parentElement, data, setTriggerValue } = component;
  let st = STATE.get(parentElement);
  if (!st) {
    const canvas = document.createElement("canvas");
    canvas.className = "parl-playground";
    canvas.setAttribute("role", "img");
    parentElement.appendChild(canvas);
    st = { canvas, payload: null, layout: null, queue: [], timer: null, timerMs: 0 };
    STATE.set(parentElement, st);
    new ResizeObserver(() => {  // redraw for a new width only (our own height change is no news)
      if (parentElement.clientWidth !== st.width) draw(st);
    }).observe(parentElement);
  }
  st.canvas.onclick = (ev) => onClick(st, ev, setTriggerValue);
  if (data && data.length) receive(st, unpackAll(data instanceof Uint8Array ? data : new Uint8Array(data)));
}
