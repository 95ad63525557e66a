// The dashboard's script: fills each page from the JSON API and refreshes it every
// data-refresh-ms, so new detections show without a reload. Text goes in through textContent
// only (never innerHTML): station and species names are data, not markup.
"use strict";
(() => {
  const body = document.body;
  const REFRESH_MS = Number(body.dataset.refreshMs) || 5000;
  const OFFSET_MS = (Number(body.dataset.utcOffsetS) || 0) * 1000;
  const PAGE_SIZE = 50;
  const MAX_SERIES = 10;
  const COLOURS = ["#2f6f4f", "#d08c2c", "#3c6fb4", "#b4443c", "#7a5cb4", "#3ca0a0",
    "#8a8a2c", "#c05a96", "#5a5a5a", "#6fa03c", "#bbbbbb"];

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }
  function link(href, text) { return el("a", text, { href }); }
  function row(cells, attrs) {
    const tr = el("tr", null, attrs);
    for (const cell of cells) {
      const td = el("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "—";
      tr.appendChild(td);
    }
    return tr;
  }
  function fill(id, rows) {
    document.querySelector(`#${id} tbody`).replaceChildren(...rows);
    const empty = document.getElementById(`${id}-empty`);
    if (empty) empty.hidden = rows.length > 0;
  }
  async function getJSON(url) {
    const answer = await fetch(url, { headers: { Accept: "application/json" } });
    if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
    return answer.json();
  }
  function query(params) {
    const kept = Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined);
    return new URLSearchParams(kept).toString();
  }
  // Times show in the hub's time zone (the offset the page was served with).
  function hubTime(iso, withDate) {
    if (!iso) return "—";
    const text = new Date(Date.parse(iso) + OFFSET_MS).toISOString();
    return withDate ? `${text.slice(0, 10)} ${text.slice(11, 19)}` : text.slice(11, 19);
  }
  function hubToEpoch(local) { return local ? String(Date.parse(`${local}:00Z`) - OFFSET_MS) : ""; }
  function midnight(day) { return Date.parse(`${day}T00:00:00Z`) - OFFSET_MS; }
  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }
  function when(iso) { return el("span", ago(iso), { title: hubTime(iso, true) }); }
  function fixed(value, digits, unit) {
    return typeof value === "number" ? `${value.toFixed(digits)}${unit}` : "—";
  }
  function speciesLink(scientific, common) {
    return link(`/species/${encodeURIComponent(scientific)}`, common || scientific);
  }
  function stationLink(id) { return link(`/stations/${encodeURIComponent(id)}`, id); }

  function every(work) {
    const live = document.getElementById("live");
    const run = async () => {
      try {
        await work();
        live.className = "live ok";
        live.textContent = `live · ${hubTime(new Date().toISOString())}`;
      } catch (error) {
        live.className = "live down";
        live.textContent = "offline: retrying";
        console.error(error);
      }
    };
    run();
    setInterval(run, REFRESH_MS);
  }

  // -- charts ------------------------------------------------------------------------------
  const charts = {};
  function chart(id, labels, series, stacked) {
    if (typeof Chart === "undefined") return;
    const top = series.slice(0, MAX_SERIES);
    const rest = series.slice(MAX_SERIES);
    if (rest.length) {
      const counts = labels.map((_, i) => rest.reduce((sum, s) => sum + s.counts[i], 0));
      top.push({ common: `${rest.length} other species`, counts });
    }
    const datasets = top.map((s, i) => ({
      label: s.common || s.scientific, data: s.counts,
      backgroundColor: COLOURS[i % COLOURS.length],
    }));
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets = datasets;
      charts[id].update("none");
      return;
    }
    charts[id] = new Chart(document.getElementById(id), {
      type: "bar",
      data: { labels, datasets },
      options: {
        animation: false, maintainAspectRatio: false,
        scales: { x: { stacked }, y: { stacked, beginAtZero: true, ticks: { precision: 0 } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  // -- the detections table (station and species pages) -----------------------------------
  function detectionsTable(fixedFilter) {
    const form = document.getElementById("filters");
    const more = document.getElementById("more");
    const state = { seen: new Set(), next: null, filters: {} };
    const tbody = document.querySelector("#detections tbody");

    function filters() {
      const data = new FormData(form);
      return {
        ...fixedFilter,
        species: data.get("species") ?? fixedFilter.species,
        station: data.get("station") ?? fixedFilter.station,
        min_confidence: data.get("min_confidence") || "",
        since: hubToEpoch(data.get("since")),
        until: hubToEpoch(data.get("until")),
      };
    }
    // A clip the station uploaded plays here, with its spectrogram; one it kept but has not
    // (yet) uploaded is only marked.
    function clipCell(d) {
      if (!d.clip_url) {
        return el("span", d.clip ? "on the station" : "—",
          { class: "clip", title: d.clip ? "the station kept a clip; not uploaded to this hub (yet)" : "" });
      }
      const box = el("div", null, { class: "clip held" });
      box.append(el("audio", null, { controls: "", preload: "none", src: d.clip_url }),
        el("img", null, { class: "spectrogram", loading: "lazy", src: d.spectrogram_url,
          alt: `spectrogram of the ${d.species.common} clip` }));
      return box;
    }
    function detectionRow(d, fresh) {
      return row([hubTime(d.start, true), stationLink(d.station),
        speciesLink(d.species.scientific, d.species.common), d.species.scientific,
        d.confidence.toFixed(3), el("span", d.source.split("/").pop(), { title: d.source }),
        clipCell(d)],
        { "data-id": d.id, "data-clip": d.clip_url ? "held" : "", class: fresh ? "new" : "" });
    }
    // A row shown before its clip arrived gets the player once the hub holds the clip.
    function addClips(detections) {
      for (const d of detections) {
        const tr = d.clip_url && tbody.querySelector(`tr[data-id="${CSS.escape(d.id)}"][data-clip=""]`);
        if (!tr) continue;
        tr.lastElementChild.replaceChildren(clipCell(d));
        tr.setAttribute("data-clip", "held");
      }
    }
    async function load(reset) {
      if (reset) { state.seen.clear(); state.next = null; state.filters = filters(); tbody.replaceChildren(); }
      const page = await getJSON(`/api/detections?${query({ ...state.filters, limit: PAGE_SIZE })}`);
      addClips(page.detections);
      const fresh = page.detections.filter((d) => !state.seen.has(d.id));
      const nodes = fresh.map((d) => detectionRow(d, !reset && state.seen.size > 0));
      fresh.forEach((d) => state.seen.add(d.id));
      if (reset) { tbody.append(...nodes); state.next = page.next; } else { tbody.prepend(...nodes); }
      more.hidden = !state.next;
      document.getElementById("detections-empty").hidden = state.seen.size > 0;
      document.getElementById("csv").href = `/api/detections.csv?${query(state.filters)}`;
    }
    async function older() {
      const page = await getJSON(`/api/detections?${query({ ...state.filters, limit: PAGE_SIZE, before: state.next })}`);
      const fresh = page.detections.filter((d) => !state.seen.has(d.id));
      fresh.forEach((d) => state.seen.add(d.id));
      tbody.append(...fresh.map((d) => detectionRow(d, false)));
      state.next = page.next;
      more.hidden = !state.next;
    }
    form.addEventListener("submit", (event) => { event.preventDefault(); load(true); });
    more.addEventListener("click", older);
    state.filters = filters();
    return { refresh: () => load(state.seen.size === 0) };
  }
  function options(select, values) {
    if (!select) return;
    const chosen = select.value;
    const nodes = [el("option", "all", { value: "" })];
    for (const [value, text] of values) nodes.push(el("option", text, { value }));
    select.replaceChildren(...nodes);
    select.value = chosen;
  }

  // -- pages -------------------------------------------------------------------------------
  async function overview() {
    const [stations, species] = await Promise.all([
      getJSON("/api/stations"),
      getJSON(`/api/species?${query({ since: String(midnight(body.dataset.today)) })}`),
    ]);
    fill("stations", stations.stations.map((s) => {
      const stats = s.stats || {};
      const disk = typeof stats.disk_free_bytes === "number" ? stats.disk_free_bytes / 1e9 : null;
      const state = el("span", s.status || "unknown", { class: `state ${s.status || "unknown"}` });
      return row([stationLink(s.id), state, when(s.last_seen), when(s.last_detection),
        fixed(stats.realtime_factor, 1, "× real time"), stats.outbox_backlog,
        fixed(disk, 1, " GB"), fixed(stats.input_level_dbfs, 1, " dBFS"),
        fixed(stats.cpu_temp_c, 0, " °C"), stats.mqtt_state], { "data-station": s.id });
    }));
    fill("species", species.species.map((s) => row([speciesLink(s.scientific, s.common),
      s.scientific, s.detections, s.stations, hubTime(s.first), hubTime(s.last),
      s.max_confidence.toFixed(3)])));
  }

  function stationPage() {
    const id = body.dataset.station;
    const table = detectionsTable({ station: id });
    every(async () => {
      const [station, day] = await Promise.all([
        getJSON(`/api/stations/${encodeURIComponent(id)}`),
        getJSON(`/api/stations/${encodeURIComponent(id)}/day?${query({ day: body.dataset.day })}`),
      ]);
      const stateNode = document.getElementById("state");
      stateNode.textContent = station.status || "unknown";
      stateNode.className = `state ${station.status || "unknown"}`;
      const stats = station.stats || {};
      document.getElementById("health").textContent = [
        `last seen ${ago(station.last_seen)}`,
        `analysis ${fixed(stats.realtime_factor, 1, "× real time")}`,
        `outbox backlog ${stats.outbox_backlog ?? "—"}`,
        `input ${fixed(stats.input_level_dbfs, 1, " dBFS")}`,
        `MQTT ${stats.mqtt_state ?? "—"}`,
      ].join(" · ");
      fill("species", day.species.map((s) => row([speciesLink(s.scientific, s.common),
        s.detections, hubTime(s.first), hubTime(s.last), s.max_confidence.toFixed(3)],
      { "data-species": s.scientific })));
      options(document.querySelector("#filters [name=species]"),
        day.species.map((s) => [s.scientific, s.common]));
      const labels = day.hourly.starts.map((start) => hubTime(start).slice(0, 5));
      chart("activity", labels, day.hourly.series, true);
      await table.refresh();
    });
  }

  function speciesPage() {
    const scientific = body.dataset.species;
    const table = detectionsTable({ species: scientific });
    every(async () => {
      const found = await getJSON(`/api/species/${encodeURIComponent(scientific)}`);
      document.getElementById("common-name").textContent = found.common || "";
      fill("where", found.stations.map((s) => row([stationLink(s.station), s.detections,
        hubTime(s.first, true), hubTime(s.last, true), s.max_confidence.toFixed(3)])));
      options(document.querySelector("#filters [name=station]"),
        found.stations.map((s) => [s.station, s.station]));
      const labels = found.daily.starts.map((start) => hubTime(start, true).slice(5, 10));
      chart("daily", labels, found.daily.series, true);
      await table.refresh();
    });
  }

  const pages = { overview: () => every(overview), station: stationPage, species: speciesPage };
  (pages[body.dataset.page] || (() => {}))();
})();
