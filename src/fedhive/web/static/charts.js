// The session page's charts, drawn from what /ui/data/sessions/{id} sends (shaped on the server
// by fedhive/web/charts.py): a uPlot line chart per metric, an SVG box plot per client metric.
// Metrics are open, so the cards follow the data: one per metric, in the server's order, keyed
// by the metric's name; a metric that first appears mid-session gets its card on that refresh.
// Every chart is drawn at its container's width and redrawn when that changes (a phone turned,
// a window resized): the page never scrolls sideways.
"use strict";
window.fedhiveCharts = (() => {
  const PALETTE = ["#2a7ae2", "#d9534f", "#12b76a", "#f79009", "#7a5af8", "#667085"];
  const HEIGHT = 220;
  const plots = new Map(); // metric -> { plot, labels }
  const resized = new ResizeObserver((entries) => {
    for (const e of entries) e.target.redraw?.();
  });

  // 3 significant digits, exponent for very large or small values: an axis tick, a table cell
  function short(v, digits = 3) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(digits - 1) : String(Number(v.toPrecision(digits)));
  }

  // The container's children become one card per item, in the items' order; a card is made by
  // make(metric) once and kept (with its chart) for as long as its metric is in the data.
  function cards(container, items, make) {
    const pairs = [];
    for (const item of items) {
      let card = [...container.children].find((c) => c.dataset.metric === item.metric);
      if (!card) {
        card = document.createElement("section");
        card.className = "card";
        card.dataset.metric = item.metric;
        card.innerHTML = make();
        card.querySelector("h2").textContent = item.metric;
      }
      container.appendChild(card); // an existing card moves into its place
      pairs.push([item, card]);
    }
    const keep = new Set(pairs.map(([, card]) => card));
    for (const child of [...container.children]) if (!keep.has(child)) child.remove();
    return pairs;
  }

  function drawLine(el, chart, rounds) {
    const labels = chart.series.map((s) => s.label).join("\n");
    const data = [rounds, ...chart.series.map((s) => s.values)];
    let state = plots.get(chart.metric);
    if (state && (state.labels !== labels || !el.contains(state.plot.root))) {
      state.plot.destroy(); // a series came or went: uPlot's series are fixed at creation
      state = undefined;
    }
    if (!state) {
      const opts = {
        width: el.clientWidth || 320,
        height: HEIGHT,
        scales: { x: { time: false } },
        legend: { live: false },
        // rounds are whole numbers: no 1.5 ticks
        axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { values: (u, ticks) => ticks.map((t) => short(t)) }],
        series: [
          { label: "round" },
          ...chart.series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, points: { size: 6 } })),
        ],
      };
      el.innerHTML = "";
      state = { plot: new uPlot(opts, data, el), labels };
      plots.set(chart.metric, state);
      el.redraw = () => {
        const s = plots.get(chart.metric);
        if (s && el.clientWidth && el.clientWidth !== s.plot.width) s.plot.setSize({ width: el.clientWidth, height: HEIGHT });
      };
      resized.observe(el);
    } else {
      state.plot.setData(data);
    }
    el.dataset.lastRound = rounds.length ? rounds[rounds.length - 1] : 0;
    // points of the chart's first series: the metric itself (or its training figure alone)
    el.dataset.points = chart.series.length ? chart.series[0].values.filter((v) => v !== null).length : 0;
  }

  // Round charts: one card per metric (accuracy and loss first, then the rest, then epsilon).
  function lines(container, charts, rounds) {
    for (const [chart, card] of cards(container, charts, () => `<h2></h2><p class="note muted"></p><div class="chart"></div>`)) {
      const note = card.querySelector(".note");
      note.textContent = chart.note;
      note.hidden = !chart.note;
      drawLine(card.querySelector(".chart"), chart, rounds);
    }
  }

  function drawBoxes(svg, metric, boxes) {
    const W = Math.max(240, Math.round(svg.clientWidth) || 480), H = HEIGHT, L = 52, B = 24, T = 8;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.dataset.boxes = boxes.length;
    if (!boxes.length) return void (svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" class="axis" text-anchor="middle">no values yet</text>`);
    const fixed = metric === "accuracy"; // a share: its whole range, so rounds compare at a glance
    let lo = fixed ? 0 : Math.min(...boxes.map((b) => b.min));
    let hi = fixed ? 1 : Math.max(...boxes.map((b) => b.max));
    if (hi - lo <= 1e-9 * Math.max(1, Math.abs(hi))) {
      const pad = Math.abs(hi) / 10 || 1; // one value throughout (local steps): a line mid-chart
      [lo, hi] = [lo - pad, hi + pad];
    }
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    const step = (W - L) / boxes.length, w = Math.min(28, step * 0.6);
    const every = Math.ceil(28 / step); // round labels never overlap: every k-th one on a narrow chart
    const ticks = [lo, (lo + hi) / 2, hi]
      .map((v) => `<text x="${L - 6}" y="${y(v) + 4}" class="axis" text-anchor="end">${short(v)}</text>`)
      .join("");
    const shapes = boxes
      .map((b, i) => {
        const cx = L + step * (i + 0.5);
        const label = i % every === 0 ? `<text x="${cx}" y="${H - 6}" class="axis" text-anchor="middle">${b.round}</text>` : "";
        return `<g><title>round ${b.round}: n=${b.n} median ${short(b.median, 4)}</title>
          <line x1="${cx}" x2="${cx}" y1="${y(b.min)}" y2="${y(b.max)}" class="whisker"/>
          <rect x="${cx - w / 2}" width="${w}" y="${y(b.q3)}" height="${Math.max(1, y(b.q1) - y(b.q3))}" class="box"/>
          <line x1="${cx - w / 2}" x2="${cx + w / 2}" y1="${y(b.median)}" y2="${y(b.median)}" class="median"/>${label}</g>`;
      })
      .join("");
    svg.innerHTML = ticks + shapes;
  }

  // Client box plots: one card per client metric, a box per round.
  function boxPlots(container, charts) {
    for (const [chart, card] of cards(container, charts, () => `<h2></h2><svg class="boxes" role="img"></svg>`)) {
      const svg = card.querySelector("svg");
      svg.setAttribute("aria-label", `clients' ${chart.metric} per round`);
      svg.redraw = () => drawBoxes(svg, chart.metric, chart.boxes);
      svg.redraw();
      resized.observe(svg);
    }
  }

  return { lines, boxPlots, short };
})();
