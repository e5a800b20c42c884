// The session page's charts, drawn from what /ui/data/sessions/{id} sends (shaped on the server
// by fedhive/web/charts.py): a uPlot line chart per metric, an SVG box plot per client metric.
// Metrics are open, so the cards follow the data: one per item, in the server's order, keyed by
// the item's key (its metric, or combiner/metric); an item that first appears mid-session gets
// its card on that refresh. Every chart is drawn at its container's width and redrawn when that
// changes (a phone turned, a window resized): the page never scrolls sideways. Hovering a line
// chart shows each series' value at that round in its legend; hovering a box shows its five numbers.
"use strict";
window.fedhiveCharts = (() => {
  const PALETTE = ["#2a7ae2", "#d9534f", "#12b76a", "#f79009", "#7a5af8", "#667085", "#0e9384", "#c11574", "#854a0e", "#3e4784", "#4ca30d", "#b93815"];
  const HEIGHT = 220;
  const plots = new Map(); // container id + key -> { plot, labels }
  const resized = new ResizeObserver((entries) => {
    for (const e of entries) e.target.redraw?.();
  });

  // 3 significant digits, exponent for very large or small values: a table cell, a hover value
  function short(v, digits = 3) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(digits - 1) : String(Number(v.toPrecision(digits)));
  }

  // Axis labels with the decimals their spacing needs (incr: the distance between two ticks), so
  // that neighbouring ticks never read the same ("0.01 / 0.00 / 0.00").
  function tickLabels(ticks, incr) {
    const biggest = Math.max(...ticks.map(Math.abs));
    if (!(incr > 0)) return ticks.map((t) => short(t));
    if (biggest >= 1e6 || (biggest > 0 && biggest < 1e-3)) {
      const digits = Math.max(0, Math.floor(Math.log10(biggest)) - Math.floor(Math.log10(incr)) + 1);
      return ticks.map((t) => (t === 0 ? "0" : t.toExponential(digits).replace(/\.?0+e/, "e").replace("e+", "e")));
    }
    // as many decimals as the spacing has (0.25 needs two), at most 20
    let decimals = Math.max(0, -Math.floor(Math.log10(incr) + 1e-9));
    while (decimals < 20 && Math.abs(Number(incr.toFixed(decimals)) - incr) > incr * 1e-6) decimals++;
    return ticks.map((t) => (Math.abs(t) < incr * 1e-6 ? 0 : t).toFixed(decimals));
  }

  // The container's children become one card per item, in the items' order; a card is made by
  // make() once and kept (with its chart) for as long as its item is in the data.
  function cards(container, items, make) {
    const pairs = [];
    for (const item of items) {
      const key = item.key ?? item.metric;
      let card = [...container.children].find((c) => c.dataset.key === key);
      if (!card) {
        card = document.createElement("section");
        card.className = "card";
        card.dataset.key = key;
        card.dataset.metric = item.metric;
        card.innerHTML = make();
        card.querySelector("h2").textContent = item.title ?? item.metric;
      }
      container.appendChild(card); // an existing card moves into its place
      pairs.push([item, card]);
    }
    const keep = new Set(pairs.map(([, card]) => card));
    for (const child of [...container.children]) if (!keep.has(child)) child.remove();
    return pairs;
  }

  // The legend shows the hovered round's values, and the last round's when nothing is hovered.
  const last = (values) => [...values].reverse().find((v) => v !== null && v !== undefined) ?? null;

  function drawLine(el, id, chart, rounds) {
    const labels = chart.series.map((s) => s.label).join("\n");
    const data = [rounds, ...chart.series.map((s) => s.values)];
    let state = plots.get(id);
    if (state && (state.labels !== labels || !el.contains(state.plot.root))) {
      state.plot.destroy(); // a series came or went: uPlot's series are fixed at creation
      state = undefined;
    }
    if (!state) {
      const opts = {
        width: el.clientWidth || 320,
        height: HEIGHT,
        scales: { x: { time: false } },
        legend: { live: true }, // the hovered round's values, series by series
        axes: [
          // rounds are whole numbers: no 1.5 ticks
          { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] },
          { size: 56, values: (u, ticks, axis, space, incr) => tickLabels(ticks, incr) },
        ],
        series: [
          { label: "round", value: (u, v, si, idx) => String(idx === null ? last(u.data[0]) : v) },
          ...chart.series.map((s, i) => ({
            label: s.label,
            stroke: PALETTE[i % PALETTE.length],
            width: 2,
            points: { size: 6 },
            value: (u, v, si, idx) => short(idx === null ? last(u.data[si]) : v, 4),
          })),
        ],
      };
      el.innerHTML = "";
      state = { plot: new uPlot(opts, data, el), labels };
      plots.set(id, state);
      el.redraw = () => {
        const s = plots.get(id);
        if (s && el.clientWidth && el.clientWidth !== s.plot.width) s.plot.setSize({ width: el.clientWidth, height: HEIGHT });
      };
      resized.observe(el);
    } else {
      state.plot.setData(data);
    }
    el.dataset.lastRound = rounds.length ? rounds[rounds.length - 1] : 0;
    // points of the chart's first series: the metric itself (or its training figure alone)
    el.dataset.points = chart.series.length ? chart.series[0].values.filter((v) => v !== null).length : 0;
    el.dataset.series = chart.series.length;
  }

  // Line charts: one card per chart (accuracy and loss first, then the rest, then epsilon).
  function lines(container, charts, rounds) {
    for (const [chart, card] of cards(container, charts, () => `<h2></h2><p class="note muted"></p><div class="chart"></div>`)) {
      const note = card.querySelector(".note");
      note.textContent = chart.note ?? "";
      note.hidden = !chart.note;
      drawLine(card.querySelector(".chart"), `${container.id}:${card.dataset.key}`, chart, rounds);
    }
  }

  const svgText = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // A box per round on the value axis the server chose (its ticks and their labels).
  function drawBoxes(svg, chart) {
    const boxes = chart.boxes;
    const W = Math.max(240, Math.round(svg.clientWidth) || 480), H = HEIGHT, B = 24, T = 10;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.dataset.boxes = boxes.length;
    if (!boxes.length || !chart.axis) return void (svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" class="axis" text-anchor="middle">no values yet</text>`);
    const { lo, hi, ticks } = chart.axis;
    const L = 12 + 7 * Math.max(...ticks.map((t) => t.label.length)); // room for the longest label
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    const step = (W - L) / boxes.length, w = Math.min(28, step * 0.6);
    const every = Math.ceil(28 / step); // round labels never overlap: every k-th one on a narrow chart
    const grid = ticks
      .map(
        (t) => `<line x1="${L}" x2="${W}" y1="${y(t.value)}" y2="${y(t.value)}" class="grid"/>
        <text x="${L - 6}" y="${y(t.value) + 4}" class="axis tick" text-anchor="end">${svgText(t.label)}</text>`,
      )
      .join("");
    const shapes = boxes
      .map((b, i) => {
        const cx = L + step * (i + 0.5);
        const label = i % every === 0 ? `<text x="${cx}" y="${H - 6}" class="axis" text-anchor="middle">${b.round}</text>` : "";
        const numbers = `min ${short(b.min, 4)} · q1 ${short(b.q1, 4)} · median ${short(b.median, 4)} · q3 ${short(b.q3, 4)} · max ${short(b.max, 4)}`;
        return `<g class="round"><title>round ${b.round}, ${b.n} client${b.n === 1 ? "" : "s"}: ${numbers}</title>
          <rect x="${cx - step / 2}" width="${step}" y="${T}" height="${H - T - B}" class="hover"/>
          <line x1="${cx}" x2="${cx}" y1="${y(b.min)}" y2="${y(b.max)}" class="whisker"/>
          <rect x="${cx - w / 2}" width="${w}" y="${y(b.q3)}" height="${Math.max(1, y(b.q1) - y(b.q3))}" class="box"/>
          <line x1="${cx - w / 2}" x2="${cx + w / 2}" y1="${y(b.median)}" y2="${y(b.median)}" class="median"/>${label}</g>`;
      })
      .join("");
    svg.innerHTML = grid + shapes;
  }

  // Box plots: one card per item (a client metric; or a combiner's clients' metric), a box per round.
  function boxPlots(container, charts) {
    for (const [chart, card] of cards(container, charts, () => `<h2></h2><svg class="boxes" role="img"></svg>`)) {
      const svg = card.querySelector("svg");
      svg.setAttribute("aria-label", `${chart.title ?? `clients' ${chart.metric}`} per round`);
      svg.redraw = () => drawBoxes(svg, chart);
      svg.redraw();
      resized.observe(svg);
    }
  }

  return { lines, boxPlots, short, tickLabels };
})();
