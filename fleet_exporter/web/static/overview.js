"use strict";
// The fleet overview: fetch api/clusters every few seconds and update the table in place
// (rows are keyed by cluster name and moved, not rebuilt, so 500 clusters stay cheap and a
// selection survives a refresh). Everything from a cluster is written with textContent.
// The server renders the same table (pages.overview_page, keep the cells alike), so the
// page says what matters before this runs, or without JavaScript; the first answer
// replaces those rows.
(() => {
  const body = document.body;
  const API = new URL(body.dataset.api, document.baseURI);
  // Seconds between refreshes: ?refresh=N in the URL, else the page's default.
  const asked = Number(new URLSearchParams(location.search).get("refresh"));
  const INTERVAL = 1000 * Math.max(1, asked || Number(body.dataset.interval) || 5);
  const table = document.getElementById("clusters");
  const tbody = table.tBodies[0];
  const filterBox = document.getElementById("filter");
  const $ = (id) => document.getElementById(id);

  const ago = (s) => {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor((s % 86400) / 3600)).padStart(2, "0") + "h";
  };
  const secs = (s) => (s === null || s === undefined ? "–" : s < 10 ? s.toFixed(2) + "s" : ago(s));
  const sum = (k) => (c) => (c.summary ? c.summary[k] : null);
  const rob = (k) => (c) => (c.summary ? c.summary.volumes_by_robustness[k] : null);
  // A count cell: "?" when the resource it needs did not list, dim when 0, coloured if not.
  const count = (get, bad) => ({
    value: get,
    desc: true,
    num: true,
    text: (c) => (get(c) === null || get(c) === undefined ? (c.summary ? "?" : "") : String(get(c))),
    cls: (c) => (get(c) === null || get(c) === undefined ? "num dim" : get(c) ? "num " + bad : "num zero"),
  });
  // Both cases of LonghornBackupOverdue: pairs overdue, volumes never backed up.
  const overdue = (c) => {
    const s = c.summary;
    if (!s || s.backups_overdue === null || s.volumes_never_backed_up === null) return null;
    return s.backups_overdue + s.volumes_never_backed_up;
  };

  const COLUMNS = {
    status: { value: (c) => c.severity, desc: true, text: (c) => c.status_label, badge: true },
    name: { value: (c) => c.name, text: (c) => c.name, link: true },
    age: {
      value: (c) => c.data_age_seconds, desc: true, num: true,
      text: (c) => ago(c.data_age_seconds),
      cls: (c) => "num" + (c.status === "stale" ? " warn" : ""),
      title: (c) => (c.last_refresh ? "last refresh took " + secs(c.last_refresh.duration_seconds) : ""),
    },
    refresh: {
      value: (c) => (c.last_refresh ? c.last_refresh.duration_seconds : null), desc: true, num: true,
      text: (c) => (c.last_refresh ? secs(c.last_refresh.duration_seconds) : "–") + (c.refreshing ? " ⟳" : ""),
      cls: () => "num",
    },
    version: { value: (c) => (c.summary ? c.summary.longhorn_version : null), text: (c) => (c.summary && c.summary.longhorn_version) || "", version: true },
    volumes: { value: sum("volumes"), desc: true, num: true, text: (c) => (c.summary ? String(c.summary.volumes) : ""), cls: () => "num" },
    unhealthy: count(sum("volumes_unhealthy"), "warn"),
    degraded: count(rob("degraded"), "warn"),
    faulted: count(rob("faulted"), "crit"),
    missing: count(sum("replicas_missing"), "warn"),
    failing: count(sum("backups_failing"), "crit"),
    overdue: {
      ...count(overdue, "warn"),
      title: (c) => (overdue(c) === null ? "" : c.summary.backups_overdue + " overdue, " + c.summary.volumes_never_backed_up + " never backed up"),
    },
    nodes: {
      ...count(sum("nodes_not_ready"), "crit"),
      text: (c) => (c.summary ? c.summary.nodes_not_ready + "/" + c.summary.nodes : ""),
    },
    disks: count(sum("disks_with_trouble"), "warn"),
    error: { value: (c) => c.last_error, text: (c) => c.last_error || "", cls: () => "err", title: (c) => c.last_error || "" },
  };
  const KEYS = [...table.tHead.rows[0].cells].map((th) => th.dataset.key);

  let clusters = [];
  let sortKey = "status";
  let sortDesc = true;
  const rows = new Map(); // name -> <tr>

  // -- state in the URL, so a reload or a shared link keeps sort and filter
  const readHash = () => {
    const p = new URLSearchParams(location.hash.slice(1));
    const s = p.get("sort") || "";
    const key = s.replace(/^-/, "");
    if (COLUMNS[key]) {
      sortKey = key;
      sortDesc = s.startsWith("-");
    }
    filterBox.value = p.get("q") || "";
  };
  const writeHash = () => {
    const p = new URLSearchParams();
    if (!(sortKey === "status" && sortDesc)) p.set("sort", (sortDesc ? "-" : "") + sortKey);
    if (filterBox.value) p.set("q", filterBox.value);
    const h = p.toString();
    history.replaceState(null, "", h ? "#" + h : location.pathname + location.search);
  };

  // -- filter: every term must match; "status:down", "health:critical", "version:1.9"
  // match that field; a leading "-" excludes.
  const haystack = (c) =>
    [c.name, c.status, c.status_text, c.health, c.summary && c.summary.longhorn_version, c.last_error,
      ...Object.entries(c.labels).map(([k, v]) => k + "=" + v)].join("\n").toLowerCase();
  const fields = {
    status: (c) => [c.status, c.status_text],
    health: (c) => [c.health],
    version: (c) => [(c.summary && c.summary.longhorn_version) || ""],
  };
  const matcher = (query) => {
    const terms = query.toLowerCase().split(/\s+/).filter(Boolean).map((t) => {
      const neg = t.startsWith("-") && t.length > 1;
      if (neg) t = t.slice(1);
      const m = /^(\w+):(.*)$/.exec(t);
      if (m && fields[m[1]]) {
        const [, f, v] = m;
        return (c) => neg !== fields[f](c).some((x) => x.toLowerCase().startsWith(v) || x.toLowerCase() === v);
      }
      return (c) => neg !== haystack(c).includes(t);
    });
    return (c) => terms.every((t) => t(c));
  };

  // Plain code-point order, as the API and the terminal sort names.
  const byCode = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
  const compare = (a, b) => {
    const col = COLUMNS[sortKey];
    const x = col.value(a), y = col.value(b);
    const xn = x === null || x === undefined, yn = y === null || y === undefined;
    if (xn !== yn) return xn ? 1 : -1; // no data sorts last either way
    let d = 0;
    if (!xn) {
      if (col.num) d = x - y;
      else if (col.version) d = String(x).localeCompare(String(y), undefined, { numeric: true });
      else d = byCode(String(x), String(y));
      if (sortDesc) d = -d;
    }
    return d || b.severity - a.severity || byCode(a.name, b.name);
  };

  // -- rows
  const newRow = (c) => {
    const tr = document.createElement("tr");
    for (const key of KEYS) {
      const td = tr.insertCell();
      td.dataset.key = key;
      if (COLUMNS[key].link) {
        const a = document.createElement("a");
        a.href = "clusters/" + encodeURIComponent(c.name);
        td.append(a);
      } else if (COLUMNS[key].badge) {
        td.append(document.createElement("span"));
      }
    }
    rows.set(c.name, tr);
    return tr;
  };
  const set = (node, prop, value) => {
    if (node[prop] !== value) node[prop] = value;
  };
  const update = (tr, c) => {
    set(tr, "className", "h-" + c.health + " st-" + c.status);
    tr.dataset.name = c.name;
    KEYS.forEach((key, i) => {
      const col = COLUMNS[key];
      const td = tr.cells[i];
      const text = col.text(c);
      if (col.link) {
        set(td.firstChild, "textContent", text);
        set(td, "title", Object.entries(c.labels).map(([k, v]) => k + "=" + v).join(" "));
      } else if (col.badge) {
        set(td.firstChild, "textContent", text);
        set(td.firstChild, "className", "badge st-" + c.status + " h-" + c.health);
        set(td, "title", c.health);
      } else {
        set(td, "textContent", text);
        set(td, "className", col.cls ? col.cls(c) : "");
        if (col.title) set(td, "title", col.title(c));
      }
    });
  };

  const render = () => {
    const keep = new Set(clusters.map((c) => c.name));
    for (const [name, tr] of rows) {
      if (!keep.has(name)) {
        tr.remove();
        rows.delete(name);
      }
    }
    const match = matcher(filterBox.value);
    const shown = clusters.filter(match).sort(compare);
    shown.forEach((c, i) => {
      const tr = rows.get(c.name) || newRow(c);
      update(tr, c);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    while (tbody.children.length > shown.length) tbody.lastElementChild.remove();
    for (const th of table.tHead.rows[0].cells) {
      const on = th.dataset.key === sortKey;
      th.setAttribute("aria-sort", on ? (sortDesc ? "descending" : "ascending") : "none");
    }
    $("empty").hidden = shown.length > 0 || clusters.length === 0;
    $("shown").textContent = shown.length === clusters.length ? "" : shown.length + " of " + clusters.length + " shown";
  };

  const ORDER = [["down", "down"], ["broken", "broken config"], ["stale", "stale"], ["unprobed", "not probed yet"], ["up", "up"]];
  const renderCounts = (data) => {
    const box = $("counts");
    box.replaceChildren();
    const total = document.createElement("span");
    total.textContent = data.clusters.length + " clusters:";
    box.append(total);
    for (const [status, label] of ORDER) {
      const n = data.by_status[status] || 0;
      if (!n && status !== "down") continue;
      const b = document.createElement("button");
      b.type = "button";
      b.className = "badge st-" + status + (n ? "" : " zero");
      b.textContent = n + " " + label;
      b.title = "show only clusters that are " + label;
      b.addEventListener("click", () => {
        filterBox.value = filterBox.value === "status:" + status ? "" : "status:" + status;
        writeHash();
        render();
      });
      box.append(b);
    }
    const crit = data.by_health.critical || 0, warn = data.by_health.warning || 0;
    const h = document.createElement("span");
    h.className = "dim";
    h.textContent = "· " + crit + " critical, " + warn + " warning";
    box.append(h);
    document.title = (crit || warn ? "(" + crit + "✖ " + warn + "⚠) " : "") + "Longhorn fleet";
  };

  // Problems of the clusters directory that are not clusters (a fleet.yaml entry without a
  // kubeconfig, a file with an invalid name): nobody sees them in the table, so say them here.
  const renderProblems = (data) => {
    const items = (data.problems || []).map((p) => {
      const line = document.createElement("p");
      line.className = "notice warn problem";
      line.textContent = p.what + ": " + p.message + " (not served)";
      return line;
    });
    $("problems").replaceChildren(...items);
  };

  // -- fetching
  let timer = null;
  let failingSince = null;
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(load, INTERVAL);
  };
  const load = async () => {
    if (document.hidden) return; // resumes on visibilitychange
    try {
      const r = await fetch(API, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      if (!body.dataset.loaded) tbody.replaceChildren(); // the server's rows, now replaced
      clusters = data.clusters;
      renderCounts(data);
      renderProblems(data);
      render();
      failingSince = null;
      $("offline").hidden = true;
      body.classList.remove("offline");
      $("updated").textContent = "updated " + new Date(data.generated_at * 1000).toLocaleTimeString();
      body.dataset.loaded = String(Number(body.dataset.loaded || 0) + 1);
    } catch (e) {
      failingSince = failingSince || new Date();
      $("offline").textContent = "The exporter is not answering (" + e.message + ") since " +
        failingSince.toLocaleTimeString() + "; showing the last data it sent.";
      $("offline").hidden = false;
      body.classList.add("offline");
    } finally {
      schedule();
    }
  };

  // -- events
  for (const th of table.tHead.rows[0].cells) {
    const b = document.createElement("button");
    b.type = "button";
    b.append(...th.childNodes);
    th.append(b);
    b.addEventListener("click", () => {
      const key = th.dataset.key;
      if (key === sortKey) sortDesc = !sortDesc;
      else {
        sortKey = key;
        sortDesc = !!COLUMNS[key].desc;
      }
      writeHash();
      render();
    });
  }
  let typing = null;
  filterBox.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      writeHash();
      render();
    }, 80);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== filterBox) {
      e.preventDefault();
      filterBox.focus();
      filterBox.select();
    } else if (e.key === "Escape" && document.activeElement === filterBox) {
      filterBox.value = "";
      writeHash();
      render();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) load();
  });
  window.addEventListener("hashchange", () => {
    readHash();
    render();
  });

  readHash();
  load();
})();
