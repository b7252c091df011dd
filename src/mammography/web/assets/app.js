/* Grad-CAM explorer: a table of every validation image and an image view
 * with the seeds' heatmaps side by side.
 *
 * Plain JS, no framework, no network: the data comes from data.js
 * (window.MAMMO_SITE, see mammography/web/site.py) and, for an opened image,
 * from maps/<key>.js inserted as a <script> (fetch() of local files is
 * blocked on file://). Heatmaps are low-resolution uint8 grids, upsampled
 * bilinearly and coloured with a look-up table here, onto a canvas.
 *
 * The URL hash holds every filter and the open image, so a link reopens the
 * same view.
 */
(function () {
  "use strict";

  var SITE = window.MAMMO_SITE;
  var $ = function (id) { return document.getElementById(id); };
  if (!SITE || !SITE.images) {
    document.body.textContent = "data.js is missing or damaged: rebuild the site with 'mammography explore'.";
    return;
  }

  var IMAGES = SITE.images;
  var SEEDS = SITE.seeds;
  var LAYERS = SITE.layers;
  var CLASSES = SITE.classes;
  var CMAPS = Object.keys(SITE.colormaps);
  var INDEX = new Map(IMAGES.map(function (r, i) { return [r.k, i]; }));
  var LUTS = {};
  CMAPS.forEach(function (name) { LUTS[name] = decode(SITE.colormaps[name]); });

  var DEFAULTS = {
    seed: "all", truth: "", pred: "", outcome: "", agree: "", name: "",
    sort: "name", page: 0, size: 100,
    img: "", layer: LAYERS[0].key, cmap: CMAPS[0], opacity: 0.5, roi: 1
  };
  var state = Object.assign({}, DEFAULTS);
  var lastHash = null;

  // ---------------------------------------------------------------- helpers
  function decode(b64) {
    var s = atob(b64);
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function letter(c) { return c ? CLASSES[c - 1] : "–"; }
  function pct(x) { return x === null || x === undefined ? "–" : Math.round(x * 100) + "%"; }
  function num(x, d) { return x === null || x === undefined ? "–" : x.toFixed(d); }
  function seedIndex(key) {
    for (var i = 0; i < SEEDS.length; i++) if (SEEDS[i].key === key) return i;
    return -1;
  }

  /* What the current seed choice says about a row: the chosen seed's
   * prediction, or the seeds' majority (consensus) for "all". Null when the
   * chosen seed did not see the image. */
  function outcomeOf(r, seed) {
    if (seed === "all") return { pred: r.m, conf: r.mc, spur: r.sp };
    var j = seedIndex(seed);
    if (j < 0 || r.p[j] === null) return null;
    return { pred: r.p[j], conf: r.c[j], spur: r.s[j] !== null ? r.s[j] : r.sp };
  }

  function matches(r, st) {
    var o = outcomeOf(r, st.seed);
    if (!o) return false;
    if (st.truth && r.t !== +st.truth) return false;
    if (st.pred && o.pred !== +st.pred) return false;
    if (st.outcome === "correct" && o.pred !== r.t) return false;
    if (st.outcome === "wrong" && o.pred === r.t) return false;
    if (st.agree === "agree" && r.pa !== 1) return false;
    if (st.agree === "disagree" && !(r.pa !== null && r.pa < 1)) return false;
    if (st.agree === "high" && r.af !== 1) return false;
    if (st.agree === "low" && r.af !== 0) return false;
    if (st.name && r.n.toLowerCase().indexOf(st.name.toLowerCase()) < 0) return false;
    return true;
  }

  function compareNullsLast(a, b, dir) {
    if (a === null || a === undefined) return (b === null || b === undefined) ? 0 : 1;
    if (b === null || b === undefined) return -1;
    return dir * (a - b);
  }

  function sorter(st) {
    var byName = function (a, b) { return a.n < b.n ? -1 : a.n > b.n ? 1 : 0; };
    var key = {
      "conf-asc": [function (r) { return outcomeOf(r, st.seed).conf; }, 1],
      "conf-desc": [function (r) { return outcomeOf(r, st.seed).conf; }, -1],
      "agree-asc": [function (r) { return r.pa; }, 1],
      "agree-desc": [function (r) { return r.pa; }, -1],
      "attn-asc": [function (r) { return r.aa; }, 1],
      "spur-desc": [function (r) { return outcomeOf(r, st.seed).spur; }, -1]
    }[st.sort];
    if (!key) return byName;
    return function (a, b) {
      var c = compareNullsLast(key[0](a), key[0](b), key[1]);
      // agreement ties are common (3 seeds: 1, 2/3, 1/3): break them by attention agreement
      if (c === 0 && (st.sort === "agree-asc" || st.sort === "agree-desc")) c = compareNullsLast(a.aa, b.aa, key[1]);
      return c || byName(a, b);
    };
  }

  var filteredCache = { sig: null, rows: [] };
  function filtered() {
    var sig = [state.seed, state.truth, state.pred, state.outcome, state.agree, state.name, state.sort].join("|");
    if (filteredCache.sig !== sig) {
      var rows = IMAGES.filter(function (r) { return matches(r, state); });
      rows.sort(sorter(state));
      filteredCache = { sig: sig, rows: rows };
    }
    return filteredCache.rows;
  }

  // ------------------------------------------------------------------- hash
  function writeHash() {
    var q = new URLSearchParams();
    Object.keys(DEFAULTS).forEach(function (k) {
      if (String(state[k]) !== String(DEFAULTS[k])) q.set(k, state[k]);
    });
    var h = "#" + q.toString();
    if (h === "#") h = "";
    if (h === lastHash) return;
    lastHash = h;
    var url = location.href.split("#")[0] + h;
    try { history.replaceState(null, "", url); } catch (e) { location.hash = h; }
  }

  function readHash() {
    var q = new URLSearchParams(location.hash.replace(/^#/, ""));
    var st = Object.assign({}, DEFAULTS);
    var pick = function (k, ok) { if (q.has(k) && ok(q.get(k))) st[k] = q.get(k); };
    var isClass = function (v) { return /^[1-4]$/.test(v); };
    pick("seed", function (v) { return v === "all" || seedIndex(v) >= 0; });
    pick("truth", isClass);
    pick("pred", isClass);
    pick("outcome", function (v) { return v === "correct" || v === "wrong"; });
    pick("agree", function (v) { return ["agree", "disagree", "high", "low"].indexOf(v) >= 0; });
    pick("name", function () { return true; });
    pick("sort", function (v) { return !!$("f-sort").querySelector('option[value="' + CSS.escape(v) + '"]'); });
    pick("img", function (v) { return INDEX.has(v); });
    pick("layer", function (v) { return LAYERS.some(function (l) { return l.key === v; }); });
    pick("cmap", function (v) { return CMAPS.indexOf(v) >= 0; });
    st.page = Math.max(0, parseInt(q.get("page"), 10) || 0);
    st.size = [50, 100, 250].indexOf(+q.get("size")) >= 0 ? +q.get("size") : DEFAULTS.size;
    var op = parseFloat(q.get("opacity"));
    st.opacity = isFinite(op) ? Math.min(1, Math.max(0, op)) : DEFAULTS.opacity;
    st.roi = q.get("roi") === "0" ? 0 : 1;
    state = st;
    lastHash = location.hash;
  }

  // --------------------------------------------------------------- controls
  function fillSelect(sel, options) {
    sel.textContent = "";
    options.forEach(function (o) { sel.appendChild(el("option", { value: o[0] }, o[1])); });
  }

  function setupControls() {
    document.title = SITE.title;
    $("title").textContent = SITE.title;
    $("subtitle").textContent = SITE.subtitle || "";
    var classOpts = [["", "all"]].concat(CLASSES.map(function (c, i) { return [String(i + 1), (i + 1) + " = " + c]; }));
    fillSelect($("f-true"), classOpts);
    fillSelect($("f-pred"), classOpts);
    fillSelect($("f-seed"), [["all", "all (majority)"]].concat(SEEDS.map(function (s) { return [s.key, s.label]; })));
    fillSelect($("v-layer"), LAYERS.map(function (l) { return [l.key, l.label]; }));
    fillSelect($("v-cmap"), CMAPS.map(function (c) { return [c, c]; }));
    renderRuns();
    renderHead();

    var bind = function (id, key, numeric) {
      $(id).addEventListener("change", function (ev) {
        state[key] = numeric ? +ev.target.value : ev.target.value;
        if (key !== "page") state.page = 0;
        update();
      });
    };
    bind("f-seed", "seed"); bind("f-true", "truth"); bind("f-pred", "pred");
    bind("f-outcome", "outcome"); bind("f-agree", "agree"); bind("f-sort", "sort");
    bind("page-size", "size", true);
    $("f-name").addEventListener("input", function (ev) { state.name = ev.target.value; state.page = 0; update(); });
    $("f-reset").addEventListener("click", function () {
      ["seed", "truth", "pred", "outcome", "agree", "name", "sort", "page"].forEach(function (k) { state[k] = DEFAULTS[k]; });
      update();
    });
    $("page-prev").addEventListener("click", function () { state.page -= 1; update(); });
    $("page-next").addEventListener("click", function () { state.page += 1; update(); });

    $("list-body").addEventListener("click", function (ev) {
      var tr = ev.target.closest("tr[data-key]");
      if (tr) { state.img = tr.dataset.key; update(); }
    });
    $("list-body").addEventListener("keydown", function (ev) {
      var tr = ev.target.closest("tr[data-key]");
      if (tr && ev.key === "Enter") { state.img = tr.dataset.key; update(); }
    });

    $("v-layer").addEventListener("change", function (ev) { state.layer = ev.target.value; update(); });
    $("v-cmap").addEventListener("change", function (ev) { state.cmap = ev.target.value; update(); });
    $("v-opacity").addEventListener("input", function (ev) {
      state.opacity = +ev.target.value;
      applyOpacity();
      writeHash();
    });
    $("v-roi").addEventListener("change", function (ev) { state.roi = ev.target.checked ? 1 : 0; applyRoi(); writeHash(); });
    $("v-close").addEventListener("click", function () { state.img = ""; update(); });
    $("v-prev").addEventListener("click", function () { step(-1); });
    $("v-next").addEventListener("click", function () { step(1); });
    document.addEventListener("keydown", function (ev) {
      if (!state.img) return;
      var tag = (ev.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "select") return;
      if (ev.key === "Escape") { state.img = ""; update(); }
      else if (ev.key === "ArrowRight") step(1);
      else if (ev.key === "ArrowLeft") step(-1);
    });
    window.addEventListener("resize", sizePanels);
    window.addEventListener("hashchange", function () {
      if (location.hash === lastHash) return;
      readHash();
      render();
    });
  }

  function syncControls() {
    $("f-seed").value = state.seed; $("f-true").value = state.truth; $("f-pred").value = state.pred;
    $("f-outcome").value = state.outcome; $("f-agree").value = state.agree; $("f-sort").value = state.sort;
    if ($("f-name").value !== state.name) $("f-name").value = state.name;
    $("page-size").value = String(state.size);
    $("v-layer").value = state.layer; $("v-cmap").value = state.cmap;
    $("v-opacity").value = String(state.opacity); $("v-roi").checked = !!state.roi;
  }

  // ------------------------------------------------------------------ table
  function renderRuns() {
    var t = $("runs");
    var head = el("tr");
    ["run", "acc", "κ (quadratic)", "macro-F1", "AUC"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    var keys = ["acc", "kappa_quadratic", "macro_f1", "auc_ovr"];
    function fmt(v) { return v === null || v === undefined ? "–" : v.toFixed(3); }
    SEEDS.forEach(function (s) {
      // metrics of the predictions recomputed from the checkpoint (what the maps explain)
      var tr = el("tr", { title: s.run });
      tr.appendChild(el("td", null, s.label));
      keys.forEach(function (k) { tr.appendChild(el("td", null, fmt(s.metrics[k]))); });
      t.appendChild(tr);
      if (s.stored_metrics) {  // the run's own record, only where it reads differently
        var st = el("tr", { "class": "stored", title: "as stored by the run (" + (s.stored_source || "") + ")" });
        st.appendChild(el("td", null, s.label + " (stored)"));
        keys.forEach(function (k) { st.appendChild(el("td", null, fmt(s.stored_metrics[k]))); });
        t.appendChild(st);
      }
      if (s.note) {  // e.g. a model whose output does not depend on the image
        var nt = el("tr", { "class": "note" });
        nt.appendChild(el("td", { colspan: "5" }, "⚠ " + s.label + ": " + s.note));
        t.appendChild(nt);
      }
    });
  }

  function renderHead() {
    var tr = $("list-head");
    tr.appendChild(el("th", { "class": "c-thumb" }, ""));
    tr.appendChild(el("th", { "class": "c-name" }, "image"));
    tr.appendChild(el("th", { "class": "c-true", title: "true density class" }, "true"));
    SEEDS.forEach(function (s) {
      tr.appendChild(el("th", { "class": "c-seed", title: "prediction and confidence of " + s.label }, s.label));
    });
    tr.appendChild(el("th", { "class": "c-num", title: "share of seeds predicting the majority class" }, "seed agreement"));
    tr.appendChild(el("th", { "class": "c-num", title: "mean rank correlation of the seeds' heatmaps; ⚑ = low agreement, requires review" }, "attention agreement"));
    tr.appendChild(el("th", { "class": "c-num", title: "share of attention on borders, markers or outside the breast" }, "spurious attention"));
  }

  function renderTable() {
    var rows = filtered();
    var pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var start = state.page * state.size;
    var slice = rows.slice(start, start + state.size);
    var body = $("list-body");
    var frag = document.createDocumentFragment();
    slice.forEach(function (r) {
      var tr = el("tr", { "data-key": r.k, tabindex: "0" });
      if (r.k === state.img) tr.className = "current";
      var td = el("td", { "class": "thumb" });
      var th = el("img", { src: "thumb/" + r.k + ".jpg", loading: "lazy", decoding: "async", alt: "",
        width: String(Math.round(r.w * 64 / r.h)), height: "64" });
      td.appendChild(th);
      tr.appendChild(td);
      tr.appendChild(el("td", { "class": "name" }, r.n));
      tr.appendChild(el("td", { "class": "cls" }, letter(r.t)));
      SEEDS.forEach(function (s, j) {
        var p = r.p[j];
        var cell = el("td", { "class": p === null ? "pred na" : (p === r.t ? "pred ok" : "pred bad") },
          p === null ? "–" : letter(p) + " " + pct(r.c[j]));
        tr.appendChild(cell);
      });
      tr.appendChild(el("td", { "class": r.pa !== null && r.pa < 1 ? "num warn" : "num" }, r.pa === null ? "–" : pct(r.pa)));
      var aa = el("td", { "class": r.af === 0 ? "num warn" : "num", title: r.af === null ? "" : (r.af ? "high agreement" : "low agreement - requires review: " + r.ar) }, num(r.aa, 2) + (r.af === 0 ? " ⚑" : ""));
      tr.appendChild(aa);
      var flagged = SEEDS.filter(function (s, j) { return r.sf && r.sf[j] === 1; }).map(function (s) { return s.label; });
      tr.appendChild(el("td", { "class": flagged.length ? "num warn" : "num",
        title: flagged.length ? "flagged as spurious for " + flagged.join(", ") : "" },
        num(r.sp, 2) + (flagged.length ? " ⚑" : "")));
      frag.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(frag);

    $("count").textContent = String(rows.length);
    $("count").dataset.count = String(rows.length);
    $("total").textContent = String(IMAGES.length);
    var perClass = [0, 0, 0, 0], correct = 0;
    rows.forEach(function (r) {
      perClass[r.t - 1] += 1;
      if (outcomeOf(r, state.seed).pred === r.t) correct += 1;
    });
    $("breakdown").textContent = "(true " + CLASSES.map(function (c, i) { return c + " " + perClass[i]; }).join(" · ") +
      "; " + correct + " correct)";
    $("page-info").textContent = rows.length
      ? "page " + (state.page + 1) + " of " + pages + " (rows " + (start + 1) + "–" + (start + slice.length) + ")"
      : "no image matches";
    $("page-prev").disabled = state.page <= 0;
    $("page-next").disabled = state.page >= pages - 1;
  }

  // ------------------------------------------------------------ image view
  var mapCache = new Map();
  var pending = new Map();
  var MAP_CACHE_SIZE = 48;

  window.mammoMaps = function (key, data) {
    mapCache.delete(key);
    mapCache.set(key, data);
    while (mapCache.size > MAP_CACHE_SIZE) mapCache.delete(mapCache.keys().next().value);
  };

  function loadMaps(key) {
    if (mapCache.has(key)) return Promise.resolve(mapCache.get(key));
    if (pending.has(key)) return pending.get(key);
    var p = new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = "maps/" + key + ".js";
      s.onload = function () {
        s.remove();
        pending.delete(key);
        if (mapCache.has(key)) resolve(mapCache.get(key));
        else reject(new Error("maps/" + key + ".js did not define the maps"));
      };
      s.onerror = function () { s.remove(); pending.delete(key); reject(new Error("cannot load maps/" + key + ".js")); };
      document.head.appendChild(s);
    });
    pending.set(key, p);
    return p;
  }

  /* Sample axis positions of the display onto a low-res map axis (bilinear,
   * pixel centres, as torch's interpolate(align_corners=False)): for each
   * display pixel the two map cells and the weight of the second. */
  function axis(nOut, nMap, start, extent, flip) {
    var i0 = new Int32Array(nOut), i1 = new Int32Array(nOut), wt = new Float32Array(nOut);
    var seen = new Uint8Array(nOut);  // 0 where a centre crop cut the image away: no map there
    for (var x = 0; x < nOut; x++) {
      var u = (x + 0.5) / nOut;
      if (flip) u = 1 - u;
      var q = start + u * extent;
      seen[x] = q >= 0 && q <= 1 ? 1 : 0;
      var m = q * nMap - 0.5;
      m = Math.min(Math.max(m, 0), nMap - 1);
      var a = Math.floor(m);
      i0[x] = a; i1[x] = Math.min(a + 1, nMap - 1); wt[x] = m - a;
    }
    return { i0: i0, i1: i1, w: wt, seen: seen };
  }

  /* Paint one low-res map onto the display image: crop the square's padding
   * (maps.geo[j]), undo the laterality flip, interpolate bilinearly and colour each
   * pixel through the LUT; pixels the model never saw (a centre crop) stay clear. */
  function paintOverlay(canvas, layer, j, maps, lut) {
    var b64 = layer && layer.m[j];
    if (!b64) return false;
    var w = layer.w, h = layer.h, v = decode(b64);
    var W = canvas.width, H = canvas.height, g = maps.geo[j];  // [top, left, height, width, flipped]
    var ax = axis(W, w, g[1], g[3], !!g[4]), ay = axis(H, h, g[0], g[2], false);
    var ctx = canvas.getContext("2d");
    var img = ctx.createImageData(W, H), d = img.data;
    for (var y = 0, k = 0; y < H; y++) {
      var r0 = ay.i0[y] * w, r1 = ay.i1[y] * w, wy = ay.w[y];
      for (var x = 0; x < W; x++, k += 4) {
        var c0 = ax.i0[x], c1 = ax.i1[x], wx = ax.w[x];
        var top = v[r0 + c0] + (v[r0 + c1] - v[r0 + c0]) * wx;
        var bot = v[r1 + c0] + (v[r1 + c1] - v[r1 + c0]) * wx;
        var o = Math.round(top + (bot - top) * wy) * 3;
        d[k] = lut[o]; d[k + 1] = lut[o + 1]; d[k + 2] = lut[o + 2];
        d[k + 3] = ax.seen[x] && ay.seen[y] ? 255 : 0;
      }
    }
    ctx.putImageData(img, 0, 0);
    return true;
  }

  function paintColorbar() {
    var c = $("v-colorbar"), ctx = c.getContext("2d"), lut = LUTS[state.cmap];
    var id = ctx.createImageData(256, 1);
    for (var i = 0; i < 256; i++) {
      id.data[4 * i] = lut[3 * i]; id.data[4 * i + 1] = lut[3 * i + 1]; id.data[4 * i + 2] = lut[3 * i + 2]; id.data[4 * i + 3] = 255;
    }
    ctx.putImageData(id, 0, 0);
  }

  function applyOpacity() {
    document.querySelectorAll("#v-panels canvas.overlay").forEach(function (c) { c.style.opacity = String(state.opacity); });
  }
  function applyRoi() {
    document.querySelectorAll("#v-panels svg.roi").forEach(function (s) { s.style.display = state.roi ? "" : "none"; });
  }

  function step(delta) {
    var rows = filtered();
    var i = rows.findIndex(function (r) { return r.k === state.img; });
    if (!rows.length) return;
    i = i < 0 ? 0 : (i + delta + rows.length) % rows.length;
    state.img = rows[i].k;
    state.page = Math.floor(i / state.size);
    update();
    var next = rows[(i + delta + rows.length) % rows.length];
    if (next) loadMaps(next.k).catch(function () {});  // prefetch the next one
  }

  var viewerToken = 0;
  function renderViewer() {
    var viewer = $("viewer");
    if (!state.img || !INDEX.has(state.img)) {
      viewer.hidden = true;
      document.body.classList.remove("viewing");
      delete viewer.dataset.drawn;
      return;
    }
    viewer.hidden = false;
    document.body.classList.add("viewing");
    paintColorbar();
    var r = IMAGES[INDEX.get(state.img)];
    var token = ++viewerToken;
    delete viewer.dataset.drawn;
    $("v-title").textContent = r.n;
    $("v-status").textContent = "loading heatmaps…";
    loadMaps(r.k).then(function (maps) {
      if (token !== viewerToken) return;  // another image was opened meanwhile
      drawViewer(r, maps);
      $("v-status").textContent = "";
      viewer.dataset.drawn = r.k;
    }).catch(function (err) {
      if (token !== viewerToken) return;
      $("v-status").textContent = String(err.message || err);
      console.error(err);
    });
  }

  function drawViewer(r, maps) {
    var info = ["true " + letter(r.t), "majority " + letter(r.m)];
    if (r.pa !== null) info.push("seed agreement " + pct(r.pa));
    if (r.af !== null) info.push(r.af ? "high agreement" : "low agreement - requires review (" + r.ar + ")");
    if (r.aa !== null) info.push("attention agreement " + num(r.aa, 2));
    if (r.sp !== null) info.push("spurious attention " + num(r.sp, 2));
    Object.keys(maps.meta || {}).forEach(function (k) { info.push(k + " " + maps.meta[k]); });
    $("v-info").textContent = info.join(" · ");
    $("v-roi-label").hidden = !maps.roi;

    var layer = maps.layers[state.layer];
    var lut = LUTS[state.cmap];
    var panels = $("v-panels");
    panels.textContent = "";
    var missing = [];
    SEEDS.forEach(function (s, j) {
      if (r.p[j] === null) { missing.push(s.label); return; }
      var fig = el("figure", { "class": "panel", "data-seed": s.key });
      var stack = el("div", { "class": "stack" });
      stack.appendChild(el("img", { "class": "base", src: "img/" + r.k + ".jpg", alt: r.n + ", " + s.label, width: String(r.w), height: String(r.h) }));
      var canvas = el("canvas", { "class": "overlay", width: String(r.w), height: String(r.h) });
      if (paintOverlay(canvas, layer, j, maps, lut)) stack.appendChild(canvas);
      if (maps.roi) {
        var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        svg.setAttribute("class", "roi");
        svg.setAttribute("viewBox", "0 0 " + r.w + " " + r.h);
        svg.setAttribute("preserveAspectRatio", "none");
        var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
        path.setAttribute("d", maps.roi);
        svg.appendChild(path);
        stack.appendChild(svg);
      }
      fig.appendChild(stack);
      var cap = el("figcaption");
      var ok = r.p[j] === r.t;
      cap.appendChild(el("strong", null, s.label + ": "));
      cap.appendChild(el("span", { "class": ok ? "ok" : "bad" }, letter(r.p[j]) + " " + pct(r.c[j]) + (ok ? " ✓" : " ✗")));
      if (r.q && r.q[j] !== null) {
        cap.appendChild(el("span", { "class": "probs warn", title: "the run's stored prediction differs from the one recomputed from its checkpoint" },
          "stored prediction " + letter(r.q[j])));
      }
      var probs = maps.probs && maps.probs[j];
      if (probs) cap.appendChild(el("span", { "class": "probs" }, CLASSES.map(function (c, i) { return c + "\u00a0" + pct(probs[i]); }).join(" · ")));
      if (r.s[j] !== null) {
        var spur = "spurious " + num(r.s[j], 2) + (r.sf && r.sf[j] === 1 ? " ⚑" : "");
        cap.appendChild(el("span", { "class": r.sf && r.sf[j] === 1 ? "probs warn" : "probs" }, spur));
      }
      var details = maps.details && maps.details[j];
      if (details && Object.keys(details).length) {
        cap.appendChild(el("span", { "class": "probs" }, Object.keys(details).map(function (k) {
          return k + " " + (typeof details[k] === "number" ? details[k].toFixed(2) : details[k]);
        }).join(" · ")));
      }
      if (!layer || !layer.m[j]) cap.appendChild(el("span", { "class": "probs" }, "no heatmap for this layer"));
      fig.appendChild(cap);
      panels.appendChild(fig);
    });
    if (missing.length) panels.appendChild(el("p", { "class": "missing" }, "not in the validation set of: " + missing.join(", ")));
    sizePanels();
    applyOpacity();
    applyRoi();
  }

  /* Scale the panels so the seeds fit side by side, as large as the window allows. */
  function sizePanels() {
    var imgs = document.querySelectorAll("#v-panels img.base");
    if (!imgs.length || !state.img) return;
    var r = IMAGES[INDEX.get(state.img)];
    var avail = $("v-panels").clientWidth - 16 * (imgs.length - 1);
    var top = $("v-panels").getBoundingClientRect().top;
    var h = Math.min(window.innerHeight - top - 48, (avail / imgs.length) * r.h / r.w);
    h = Math.max(160, Math.floor(h));
    var w = Math.floor(h * r.w / r.h);
    imgs.forEach(function (img) {
      img.style.height = h + "px";
      img.style.width = w + "px";
      img.closest("figure").style.width = w + "px";  // captions wrap under their image
    });
  }

  // ------------------------------------------------------------------ main
  /* Re-render only what changed: the table when a filter, the sort or the
   * page changed (layout of 100 rows costs more than anything else here),
   * the image view when the image, layer or colours changed. */
  var rendered = { table: null, viewer: null };
  function tableSignature() {
    return [state.seed, state.truth, state.pred, state.outcome, state.agree, state.name,
      state.sort, state.page, state.size].join("|");
  }
  function render() {
    syncControls();
    if (tableSignature() !== rendered.table) {
      renderTable();
      rendered.table = tableSignature();  // after renderTable, which may clamp the page
    } else {
      markCurrentRow();
    }
    var viewerSig = [state.img, state.layer, state.cmap].join("|");
    if (viewerSig !== rendered.viewer) {
      renderViewer();
      rendered.viewer = viewerSig;
    }
  }

  function markCurrentRow() {
    document.querySelectorAll("#list-body tr.current").forEach(function (tr) { tr.classList.remove("current"); });
    if (!state.img) return;
    var tr = document.querySelector('#list-body tr[data-key="' + state.img + '"]');
    if (tr) tr.classList.add("current");
  }

  function update() {
    render();
    writeHash();
  }

  setupControls();
  readHash();
  render();
  writeHash();
  window.__mammoFirstRender = performance.now();
  document.documentElement.dataset.ready = "1";
})();
