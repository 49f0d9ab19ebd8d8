// The report's interactive views (analysis/report/interactive.py inlines this file once, allowed by its
// sha256 in the page's Content-Security-Policy). Each view is a div.live with data-view (its kind) and data-src:
// the id of the inert JSON block (type application/json) that holds its data; nothing is fetched. Without
// scripts (or in print) the static figure beside each view is what a reader sees.
(() => {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const MASKING = ["not masked", "[MASK]", "a random token", "chosen, kept"];
  const FLAGS = [[1, "T", "same token"], [2, "P", "same position"], [4, "L", "same left token"],
    [8, "R", "same right token"]];
  document.documentElement.classList.add("js");

  function el(tag, attrs = {}, parent = null, text = null) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function sv(tag, attrs = {}, parent = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i, c = VIRIDIS[i].map((v, j) => Math.round(v + f * (VIRIDIS[i + 1][j] - v)));
    return `rgb(${c.join(",")})`;
  }
  function num(v, digits = 3) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    const a = Math.abs(v);
    return a !== 0 && (a < 0.001 || a >= 1e5) ? v.toExponential(2) : v.toFixed(a >= 100 ? 1 : digits);
  }
  function select(parent, label, options, cls) {
    const wrap = el("label", {}, parent, label + " ");
    const s = el("select", {class: cls}, wrap);
    options.forEach(([value, text]) => el("option", {value: String(value)}, s, text));
    return s;
  }

  // ------------------------------------------------------------ the tooltip
  const tip = el("div", {class: "tip", role: "tooltip"}, document.body);
  tip.hidden = true;
  function showTip(evt, nodes) {
    tip.replaceChildren(...nodes);
    tip.hidden = false;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = evt.clientX + 14, y = evt.clientY + 14;
    if (x + w > window.innerWidth - 8) x = Math.max(8, evt.clientX - w - 14);
    if (y + h > window.innerHeight - 8) y = Math.max(8, evt.clientY - h - 14);
    tip.style.left = `${x + window.scrollX}px`;
    tip.style.top = `${y + window.scrollY}px`;
  }
  function hideTip() { tip.hidden = true; }
  function line(text, cls) { const d = el("div", cls ? {class: cls} : {}); d.textContent = text; return d; }

  // A sentence from its pieces ("▁Tom ▁is ▁here", GPT-2's "Ġ", BERT's "##"), the piece at `pos` marked;
  // `around`: only that many pieces either side (… where cut).
  function sentence(pieces, pos, around = null) {
    const out = el("span", {class: "sent"});
    if (!pieces) { out.textContent = "(sentence not recorded)"; return out; }
    const p = pieces.split(" "), marks = p.some(x => x.startsWith("\u2581") || x.startsWith("\u0120"));
    const lo = around === null ? 0 : Math.max(0, pos - around), hi = around === null ? p.length : Math.min(p.length, pos + around + 1);
    if (lo > 0) out.append("… ");
    for (let i = lo; i < hi; i++) {
      let text = p[i], space = i > lo;
      if (/^(\[[A-Z]+\]|<[a-z]+>)$/.test(text)) { /* [MASK], <mask>: a word of its own */ }
      else if (marks) { space = space && /^[\u2581\u0120]/.test(text); text = text.replace(/^[\u2581\u0120]/, ""); }
      else if (text.startsWith("##")) { space = false; text = text.slice(2); }
      if (space) out.append(" ");
      if (i === pos) el("mark", {}, out, text); else out.append(text);
    }
    if (hi < p.length) out.append(" …");
    return out;
  }

  // ------------------------------------------------------------ t-SNE: points of one model at one layer
  function tsne(box, d) {
    const bar = el("div", {class: "controls"}, box);
    const model = select(bar, "model", d.models.map((m, i) => [i, m.label]), "model");
    const layer = select(bar, "layer", [], "layer");
    const colourBy = select(bar, "colour by", [["token", "token"], ["position", "position"]], "colour");
    colourBy.value = d.colour_by;
    const W = 640, H = 420, P = 10;
    const svg = sv("svg", {class: "tsne-plot", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `t-SNE of ${d.name}`}, box);
    const legend = el("div", {class: "legend"}, box);
    const tokens = d.tokens, colours = Object.fromEntries(tokens.map((t, i) => [t, TAB10[i % 10]]));
    function layers() {
      const m = d.models[+model.value], keep = layer.value;
      layer.replaceChildren(...m.layers.map(l => { const o = el("option", {value: String(l)}, null, `layer ${l}`); return o; }));
      layer.value = m.layers.map(String).includes(keep) ? keep : String(m.layers[m.layers.length - 1]);
    }
    function draw() {
      const m = d.models[+model.value], xy = m.xy[layer.value], byPos = colourBy.value === "position";
      const maxPos = Math.max(1, ...m.pos);
      svg.replaceChildren();
      const g = sv("g", {}, svg);
      for (let i = 0; i < m.tok.length; i++) {
        const x = P + xy[2 * i] / 1000 * (W - 2 * P), y = H - P - xy[2 * i + 1] / 1000 * (H - 2 * P);
        const code = m.masked ? m.masked[i] : 0;
        const fill = code === 1 ? "#000" : code === 2 ? "#999" : byPos ? viridis(m.pos[i] / maxPos) : colours[tokens[m.tok[i]]];
        sv("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: code === 1 || code === 2 ? 3.6 : 3, fill,
          class: code ? "pt masked" : "pt", "data-i": i}, g);
      }
      legend.replaceChildren();
      if (byPos) legend.append(`colour: position 0 (dark) … ${maxPos} (light)`);
      else tokens.forEach(t => { const s = el("span", {class: "key"}, legend); el("i", {style: `background:${colours[t]}`}, s); s.append(t); });
      if (m.masked && m.masked.some(c => c === 1)) legend.append(" · black: [MASK]ed, grey: replaced by a random token");
      legend.append(` · ${m.tok.length} occurrences, ${m.label} seed ${m.seed}`);
    }
    svg.addEventListener("mouseover", evt => {
      const i = evt.target.getAttribute && evt.target.getAttribute("data-i");
      if (i === null || i === undefined) return;
      const m = d.models[+model.value], k = +i, code = m.masked ? m.masked[k] : 0;
      const s = line("", "tip-sent"); s.append(sentence(d.sentences[m.sent[k]], m.pos[k]));
      showTip(evt, [line(tokens[m.tok[k]], "tip-head"),
        line(`position ${m.pos[k]} · ${MASKING[code] || "masked"} · sentence ${m.sid[k]} · layer ${layer.value}`), s]);
    });
    svg.addEventListener("mouseout", hideTip);
    model.addEventListener("change", () => { layers(); draw(); });
    layer.addEventListener("change", draw);
    colourBy.addEventListener("change", draw);
    layers(); draw();
  }

  // ------------------------------------------------------------ neighbours of one probe occurrence
  function neighbours(box, d) {
    const bar = el("div", {class: "controls"}, box);
    const find = el("input", {type: "search", class: "search", placeholder: "filter: a word or part of a sentence",
      "aria-label": "filter the occurrences"}, el("label", {}, bar, "occurrence "));
    const model = select(bar, "model", d.models.map((m, i) => [i, m]), "model");
    const list = el("select", {class: "occurrences", size: "8", "aria-label": "probe occurrences"}, box);
    const shown = el("div", {class: "neighbours"}, box);
    const labels = d.queries.map(q => `${q.word} — ${sentence(d.sentences[q.sent], -1).textContent}`);
    const texts = labels.map(t => t.toLowerCase());
    function fill() {
      const needle = find.value.trim().toLowerCase();
      list.replaceChildren();
      d.queries.forEach((_, i) => {
        if (!needle || texts[i].includes(needle)) el("option", {value: String(i)}, list, labels[i]);
      });
    }
    function draw() {
      shown.replaceChildren();
      if (list.value === "") return;
      const qi = +list.value, q = d.queries[qi], m = d.models[+model.value], hits = (d.hits[m] || [])[qi];
      const head = el("p", {class: "query"}, shown);
      head.append(`${m}: the ${d.k} nearest neighbours (${d.metric}) of `); head.append(sentence(d.sentences[q.sent], q.pos));
      if (!hits) { el("p", {class: "note"}, shown, `${m} has no such occurrence (another tokenizer, or not sampled).`); return; }
      const t = el("table", {class: "nbr-table"}, el("div", {class: "scroll"}, shown));
      const hr = el("tr", {}, el("thead", {}, t));
      el("th", {}, hr, "layer"); for (let r = 1; r <= d.k; r++) el("th", {}, hr, `#${r}`);
      const body = el("tbody", {}, t);
      hits.forEach((flat, layer) => {
        const tr = el("tr", {}, body);
        el("th", {scope: "row"}, tr, String(d.layers[m][layer]));
        for (let j = 0; j + 3 < flat.length; j += 4) {
          const td = el("td", {class: "nbr"}, tr), flags = flat[j + 3];
          td.append(sentence(d.sentences[flat[j]], flat[j + 1], 4));
          const b = el("div", {class: "badges"}, td);
          FLAGS.forEach(([bit, letter, what]) => el("span", {class: flags & bit ? "on" : "off", title: what}, b, letter));
          b.append(` ${num(flat[j + 2])}`);
        }
      });
      el("p", {class: "legend"}, shown, "T same token · P same position · L same left token · R same right token " +
        "(lit when shared); the number: " + (d.metric === "cosine" ? "cosine similarity" : "minus the Euclidean distance"));
    }
    find.addEventListener("input", () => { fill(); });
    list.addEventListener("change", draw);
    model.addEventListener("change", draw);
    fill();
  }

  // ------------------------------------------------------------ layer-wise curves with values on hover
  function curves(box, d) {
    const seeds = [...new Set(d.panels.flatMap(p => p.series.flatMap(s => s.seeds.map(x => x[0]))))];
    const bar = el("div", {class: "controls"}, box);
    if (seeds.length > 1) {
      bar.append("show: ");
      seeds.forEach((s, i) => {
        const lab = el("label", {class: "seed-toggle"}, bar);
        const c = el("input", {type: "checkbox", "data-seed": String(i)}, lab);
        c.checked = true; lab.append(` ${s}`);
        c.addEventListener("change", () => box.classList.toggle(`hide-s${i}`, !c.checked));
      });
    }
    const grid = el("div", {class: "curve-grid"}, box);
    d.panels.forEach(p => panel(el("div", {class: "curve-panel"}, grid), p, seeds));
  }
  function panel(box, p, seeds) {
    const W = 320, H = 220, L = 46, R = 8, T = 20, B = 30;
    const pts = p.series.flatMap(s => s.seeds.flatMap(x => x[1]));
    const cats = p.categories || null, xs = pts.map(q => cats ? cats.indexOf(q[0]) : q[0]);
    const ys = pts.flatMap(q => [q[1], q[2], q[3]]).filter(v => v !== null && Number.isFinite(v) && (!p.log || v > 0));
    if (!ys.length) return;
    const f = p.log ? Math.log10 : v => v;
    let y0 = Math.min(...ys.map(f)), y1 = Math.max(...ys.map(f));
    if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
    const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
    const X = v => L + (v - x0) / (x1 - x0) * (W - L - R), Y = v => T + (1 - (f(v) - y0) / (y1 - y0)) * (H - T - B);
    const svg = sv("svg", {viewBox: `0 0 ${W} ${H}`, class: "curve", role: "img", "aria-label": p.title}, box);
    sv("text", {x: W / 2, y: 13, "text-anchor": "middle", class: "ttl"}, svg).textContent = p.title;
    sv("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis"}, svg);
    sv("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"}, svg);
    for (let k = 0; k <= 4; k++) {
      const v = y0 + (y1 - y0) * k / 4, y = T + (1 - k / 4) * (H - T - B);
      sv("text", {x: L - 4, y: y + 3, "text-anchor": "end", class: "tick"}, svg).textContent = num(p.log ? 10 ** v : v, 3);
    }
    const ticks = cats ? cats.map((c, i) => [i, c]) : [...new Set(xs)].sort((a, b) => a - b).map(v => [v, String(v)]);
    const every = Math.ceil(ticks.length / 8);
    ticks.forEach(([v, t], i) => { if (i % every === 0) sv("text", {x: X(v), y: H - B + 12, "text-anchor": "middle", class: "tick"}, svg).textContent = t; });
    sv("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "lab"}, svg).textContent = p.x;
    sv("text", {x: 10, y: (T + H - B) / 2, transform: `rotate(-90 10 ${(T + H - B) / 2})`, "text-anchor": "middle", class: "lab"}, svg).textContent = p.y;
    const keys = el("div", {class: "legend"}, box);
    p.series.forEach(s => {
      if (s.label) { const k = el("span", {class: "key"}, keys); el("i", {style: `background:${s.colour}`}, k); k.append(s.label); }
      s.seeds.forEach(([seed, points]) => {
        const g = sv("g", {class: `s${seeds.indexOf(seed)}`}, svg), ok = points.filter(q => q[1] !== null && (!p.log || q[1] > 0));
        const at = q => X(cats ? cats.indexOf(q[0]) : q[0]);
        sv("polyline", {points: ok.map(q => `${at(q).toFixed(1)},${Y(q[1]).toFixed(1)}`).join(" "), fill: "none",
          stroke: s.colour, "stroke-width": s.width || 1.4, "stroke-dasharray": s.dash || "", opacity: 0.9}, g);
        ok.forEach(q => {
          if (q[2] !== null && q[3] !== null && q[3] > q[2] && (!p.log || q[2] > 0))
            sv("line", {x1: at(q), x2: at(q), y1: Y(q[2]), y2: Y(q[3]), stroke: s.colour, "stroke-width": 1, opacity: 0.6}, g);
          const c = sv("circle", {cx: at(q).toFixed(1), cy: Y(q[1]).toFixed(1), r: 3.2, fill: s.colour, class: "pt"}, g);
          c.addEventListener("mouseover", evt => showTip(evt, [line(`${s.label || s.name} · ${seed}`, "tip-head"),
            line(`${p.x} ${q[0]}: ${num(q[1], 4)}` + (q[2] !== null && q[3] !== null && q[3] > q[2] ? ` [${num(q[2], 4)}, ${num(q[3], 4)}]` : " (no interval)")),
            line(q[4] !== null && q[4] !== undefined ? `n = ${q[4].toLocaleString("en")}` : "n not recorded")]));
          c.addEventListener("mouseout", hideTip);
        });
      });
    });
  }

  // ------------------------------------------------------------ every pair of models at one layer
  function matrix(box, d) {
    const bar = el("div", {class: "controls"}, box);
    const layer = select(bar, d.depth, d.layers.map(l => [l, String(l)]), "layer");
    layer.value = String(d.layers[d.layers.length - 1]);
    const row = el("div", {class: "matrix-row"}, box);
    const heat = el("div", {}, row), map = el("div", {}, row), note = el("p", {class: "legend"}, box);
    const all = Object.values(d.cells).flat(1).flatMap(r => r).filter(c => c && c[0] !== null && c[3] !== null)
      .map(c => c[0]);  // measured pairs only (the diagonal has no n)
    const lo = Math.min(...all), hi = Math.max(...all);
    function draw() {
      const cells = d.cells[layer.value], n = d.models.length, S = 34, M = 92;
      heat.replaceChildren(); map.replaceChildren();
      const svg = sv("svg", {viewBox: `0 0 ${M + n * S + 4} ${M + n * S + 4}`, class: "matrix", role: "img",
        "aria-label": `${d.measure} distance between every pair of models`}, heat);
      d.models.forEach((m, i) => {
        sv("text", {x: M - 4, y: M + i * S + S / 2 + 4, "text-anchor": "end", class: "tick"}, svg).textContent = m;
        sv("text", {x: M + i * S + S / 2, y: M - 4, transform: `rotate(-60 ${M + i * S + S / 2} ${M - 4})`, class: "tick"}, svg).textContent = m;
        for (let j = 0; j < n; j++) {
          const c = cells[i][j], x = M + j * S, y = M + i * S;
          const missing = !c || c[0] === null;
          const r = sv("rect", {x, y, width: S - 1, height: S - 1, class: missing ? "cell missing" : "cell",
            fill: i === j ? "#fff" : missing ? "#e4e4e4" : viridis((c[0] - lo) / Math.max(1e-12, hi - lo))}, svg);
          if (missing && i !== j) sv("text", {x: x + S / 2, y: y + S / 2 + 4, "text-anchor": "middle", class: "tick"}, svg).textContent = "×";
          if (i === j) continue;
          r.addEventListener("mouseover", evt => showTip(evt, [line(`${d.models[i]} – ${d.models[j]}, ${d.depth} ${layer.value}`, "tip-head"),
            missing ? line(`missing: ${c ? c[4] : "not measured"}`) :
              line(`${d.measure} ${num(c[0], 4)}` + (c[2] > c[1] ? ` [${num(c[1], 4)}, ${num(c[2], 4)}]` : "")),
            line(c && c[3] !== null ? `n = ${c[3].toLocaleString("en")} shared ${d.unit}s` : "")]));
          r.addEventListener("mouseout", hideTip);
        }
      });
      const mds = d.mds[layer.value];
      if (!mds) { el("p", {class: "note"}, map, "No map: fewer than three models with every pair measured."); return; }
      const W = 300, H = 300, P = 40, svg2 = sv("svg", {viewBox: `0 0 ${W} ${H}`, class: "mds", role: "img", "aria-label": "MDS map"}, map);
      const xs = mds.xy.filter((_, k) => k % 2 === 0), ys = mds.xy.filter((_, k) => k % 2 === 1);
      const span = Math.max(1e-12, Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
      const cx = (Math.max(...xs) + Math.min(...xs)) / 2, cy = (Math.max(...ys) + Math.min(...ys)) / 2;
      mds.models.forEach((mi, k) => {
        const x = W / 2 + (xs[k] - cx) / span * (W - 2 * P), y = H / 2 - (ys[k] - cy) / span * (H - 2 * P);
        sv("title", {}, sv("circle", {cx: x, cy: y, r: 4, fill: d.colours[mi] || "#444"}, svg2)).textContent = d.models[mi];
        sv("text", {x: x + 6, y: y + 3, class: "tick"}, svg2).textContent = d.models[mi];
      });
      note.textContent = `Left: ${d.measure} distance (colour: ${num(lo)} dark … ${num(hi)} light; × missing, hover for why). ` +
        `Right: classical MDS of the ${mds.models.length} models with every pair measured` +
        (mds.left_out.length ? ` (left out: ${mds.left_out.map(i => d.models[i]).join(", ")})` : "") +
        `; stress ${num(mds.stress)}.`;
    }
    layer.addEventListener("change", draw);
    draw();
  }

  const VIEWS = {tsne, neighbours, curves, matrix};
  function start(box) {
    if (box.dataset.started) return;
    box.dataset.started = "1";
    try {
      VIEWS[box.dataset.view](box, JSON.parse(document.getElementById(box.dataset.src).textContent));
      box.hidden = false;
      box.classList.remove("pending");
      const fig = box.closest("figure");
      if (fig) fig.classList.add("live-on");
    } catch (e) {
      box.hidden = true;
      console.error(`interactive view ${box.dataset.src}: ${e}`);
    }
  }
  const boxes = [...document.querySelectorAll("div.live[data-view]")];
  if ("IntersectionObserver" in window) {
    const seen = new IntersectionObserver(entries => entries.forEach(e => {
      if (e.isIntersecting) { seen.unobserve(e.target); start(e.target); }
    }), {rootMargin: "600px"});
    boxes.forEach(b => { b.hidden = false; b.classList.add("pending"); seen.observe(b); });
  } else boxes.forEach(start);
})();
