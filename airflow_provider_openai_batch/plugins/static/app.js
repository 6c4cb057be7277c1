// The "OpenAI Batches" page and the "OpenAI Batch" task tab of airflow-provider-openai-batch.
// Every value from the API (ids, metadata, error messages) is put into the page with textContent or as an
// attribute value, never as HTML: a "<script>" in metadata is shown as text and never runs. The page's
// Content-Security-Policy allows no inline script either.
"use strict";

(function () {
  const view = document.body.dataset.view;
  const params = new URLSearchParams(location.search);
  // The Airflow UI's root: this page is served at <root>/openai-batches/...
  const root = location.pathname.slice(0, location.pathname.indexOf("/openai-batches/"));
  const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
  let timer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function message(text) {
    const box = document.getElementById("message");
    box.hidden = !text;
    box.textContent = text || "";
  }

  async function getJSON(path, query) {
    const url = new URL(path, location.href);
    for (const [k, v] of Object.entries(query || {})) if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await answer.json().catch(() => ({}));
    if (!answer.ok) throw new Error(body.detail ? String(body.detail) : `HTTP ${answer.status}`);
    return body;
  }

  // Navigate the whole Airflow UI (the page runs in its iframe, which may not navigate the top window
  // itself): a link clicked in the top document, which is the same origin.
  function openInAirflow(event) {
    const href = event.currentTarget.getAttribute("href");
    try {
      const doc = window.top.document;
      const link = doc.createElement("a");
      link.href = href;
      doc.body.append(link);
      link.click();
      link.remove();
      event.preventDefault();
    } catch (err) {
      /* not framed by the UI: the link opens normally */
    }
  }

  function age(createdAt) {
    if (!createdAt) return "";
    let s = Math.max(0, Math.floor(Date.now() / 1000 - createdAt));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function statusBadge(status) {
    return el("span", { class: `status status-${status}`, "data-status": status, text: status });
  }

  function progress(b) {
    const r = b.requests;
    const pct = (n) => (r.total ? (100 * n) / r.total : 0);
    const bar = el(
      "div",
      { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": r.total, "aria-valuenow": r.completed + r.failed },
      el("div", { class: "done", style: null }),
      el("div", { class: "failed" }),
    );
    bar.children[0].style.width = `${pct(r.completed)}%`;
    bar.children[1].style.width = `${pct(r.failed)}%`;
    return el("div", {}, bar, el("div", { class: "muted progress-text", text: `${r.completed} / ${r.total} done, ${r.failed} failed` }));
  }

  function tokens(b) {
    if (!b.usage) return "";
    const u = b.usage;
    return `${u.total_tokens ?? "?"} (in ${u.input_tokens ?? "?"}, out ${u.output_tokens ?? "?"})`;
  }

  function creatorCell(b) {
    const c = b.creator;
    if (!c) return el("span", { class: "muted", text: "not recorded" });
    const text = `${c.dag_id} / ${c.task_id ?? "?"} / ${c.run_id ?? "?"}${c.map_index >= 0 ? ` [${c.map_index}]` : ""}`;
    const box = el("div", { class: "creator" }, el("div", { text }));
    if (b.ti_path) {
      const link = el("a", { href: root + b.ti_path, target: "_top", class: "ti-link", text: "Open task instance" });
      link.addEventListener("click", openInAirflow);
      box.append(link);
    }
    return box;
  }

  function metadataList(b) {
    const list = el("ul", { class: "meta" });
    for (const [k, v] of Object.entries(b.metadata || {})) {
      if (k.startsWith("airflow_")) continue; // shown as "Created by"
      list.append(el("li", {}, el("span", { class: "key", text: `${k}: ` }), el("span", { class: "value", text: v })));
    }
    return list;
  }

  function cancelButton(b, connId, after) {
    if (!b.can_cancel) return null;
    const button = el("button", { type: "button", class: "cancel", "data-batch": b.id, text: "Cancel" });
    button.addEventListener("click", async () => {
      if (button.dataset.armed !== "1") {
        // Two clicks instead of confirm(): the UI's iframe may not open dialogs.
        button.dataset.armed = "1";
        button.textContent = "Confirm cancel";
        return;
      }
      button.disabled = true;
      try {
        const url = new URL(`api/batches/${encodeURIComponent(b.id)}/cancel`, new URL("./", location.href));
        url.searchParams.set("conn_id", connId);
        const answer = await fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-OpenAI-Batches": "cancel" } });
        const body = await answer.json().catch(() => ({}));
        if (!answer.ok) throw new Error(body.detail ? String(body.detail) : `HTTP ${answer.status}`);
        message("");
        after();
      } catch (err) {
        message(`Cancel failed: ${err.message}`);
        button.disabled = false;
      }
    });
    return button;
  }

  // While a batch runs: as often as the server's cache allows. Otherwise every 30 s, so a batch made after the
  // page was opened still appears without a reload.
  function schedule(reload, batches, seconds) {
    clearTimeout(timer);
    const running = batches.some((b) => !TERMINAL.has(b.status));
    timer = setTimeout(reload, (running ? Math.max(3, seconds || 5) : 30) * 1000);
  }

  function stamp(text) {
    document.getElementById("state").textContent = `${text} · updated ${new Date().toLocaleTimeString()}`;
  }

  async function fillConnections(current) {
    const select = document.getElementById("conn");
    if (select.options.length && select.value === current) return;
    let ids = [current];
    try {
      ids = (await getJSON("api/connections")).connections;
    } catch (err) {
      /* the page still works for the chosen connection */
    }
    if (!ids.includes(current)) ids.unshift(current);
    select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
    select.value = current;
  }

  // The server's choice among the connections this user may read: openai_default, else the first one.
  async function defaultConnection() {
    try {
      return (await getJSON("api/connections")).default || "openai_default";
    } catch (err) {
      return "openai_default";
    }
  }

  // ---------------------------------------------------------------------------------------- batches page
  async function batchesView() {
    const connId = params.get("conn_id") || (await defaultConnection());
    const single = params.get("batch_id");
    const cursors = [null]; // the "after" of every page seen, for "Newer"
    document.getElementById("status").value = params.get("status") || "";
    document.getElementById("dag").value = params.get("dag_id") || "";
    await fillConnections(connId);
    document.getElementById("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const [k, v] of new FormData(event.target)) if (v) next.set(k, v);
      location.search = next.toString();
    });
    document.getElementById("conn").addEventListener("change", () => document.getElementById("filters").requestSubmit());

    const body = document.querySelector("#batches tbody");
    const older = document.getElementById("older");
    const newer = document.getElementById("newer");

    async function load() {
      const after = cursors[cursors.length - 1];
      let answer;
      try {
        answer = await getJSON("api/batches", {
          conn_id: connId,
          status: params.get("status"),
          dag_id: params.get("dag_id"),
          batch_id: single,
          after,
        });
        message("");
      } catch (err) {
        message(`Could not list the batches of ${connId}: ${err.message}`);
        timer = setTimeout(load, 10000);
        return;
      }
      document.getElementById("single").hidden = !single;
      const rows = answer.batches.map((b) =>
        el(
          "tr",
          { "data-batch": b.id },
          el("td", {}, el("code", { class: "batch-id", text: b.id }), el("div", { class: "muted", text: b.endpoint || "" })),
          el("td", {}, statusBadge(b.status)),
          el("td", {}, progress(b)),
          el("td", { class: "tokens", text: tokens(b) }),
          el("td", { class: "age", title: b.created_at ? new Date(b.created_at * 1000).toISOString() : null, text: age(b.created_at) }),
          el("td", {}, creatorCell(b)),
          el("td", {}, metadataList(b)),
          el("td", {}, cancelButton(b, connId, load)),
        ),
      );
      if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No batches match." })));
      body.replaceChildren(...rows);
      older.disabled = !answer.next_after;
      older.onclick = () => {
        cursors.push(answer.next_after);
        load();
      };
      newer.disabled = cursors.length < 2;
      newer.onclick = () => {
        cursors.pop();
        load();
      };
      stamp(`${answer.batches.length} batch(es) of ${connId}`);
      schedule(load, answer.batches, answer.refresh_seconds);
    }
    await load();
  }

  // ------------------------------------------------------------------------------------------ task tab
  async function taskView() {
    const task = {
      dag_id: params.get("dag_id"),
      run_id: params.get("run_id"),
      task_id: params.get("task_id"),
      map_index: params.get("map_index"),
    };
    const chosen = params.get("conn_id");
    const cards = document.getElementById("cards");

    async function load() {
      let answer;
      try {
        answer = await getJSON("api/task-batches", { ...task, conn_id: chosen });
        message("");
      } catch (err) {
        message(`Could not show this task's batches: ${err.message}`);
        await fillConnections(chosen || (await defaultConnection()));
        return;
      }
      await fillConnections(answer.conn_id || chosen || (await defaultConnection()));
      // Batches of DAGs this user may not read are left out by the server and only counted.
      const hidden = answer.hidden ? `${answer.hidden} batch(es) hidden: created by a DAG you may not read` : "";
      if (!answer.batches.length) {
        cards.replaceChildren(el("p", { class: "muted", text: hidden || "This task has not recorded an OpenAI batch (yet)." }));
        stamp(hidden ? "hidden" : "no batch");
        schedule(load, [{ status: "unknown" }], 10);
        return;
      }
      cards.replaceChildren(
        ...answer.batches.map((b) => {
          const files = el(
            "dl",
            {},
            el("dt", { text: "Progress" }), el("dd", {}, progress(b)),
            el("dt", { text: "Tokens" }), el("dd", { class: "tokens", text: tokens(b) || "not reported yet" }),
            el("dt", { text: "Age" }), el("dd", { class: "age", text: age(b.created_at) }),
            el("dt", { text: "Endpoint" }), el("dd", { text: b.endpoint || "" }),
            el("dt", { text: "Input file" }), el("dd", {}, el("code", { class: "input-file", text: b.input_file_id || "none" })),
            el("dt", { text: "Output file" }), el("dd", {}, el("code", { class: "output-file", text: b.output_file_id || "none" })),
            el("dt", { text: "Error file" }), el("dd", {}, el("code", { class: "error-file", text: b.error_file_id || "none" })),
            el("dt", { text: "Metadata" }), el("dd", {}, metadataList(b)),
          );
          const errors = b.errors.length
            ? el("ul", { class: "errors" }, ...b.errors.map((e) => el("li", { text: `${e.code || "error"}${e.line ? ` (line ${e.line})` : ""}: ${e.message || ""}` })))
            : null;
          return el(
            "section",
            { class: "card", "data-batch": b.id },
            el("h2", {}, el("code", { class: "batch-id", text: b.id }), statusBadge(b.status), cancelButton(b, answer.conn_id, load)),
            files,
            errors,
          );
        }),
      );
      const more = answer.more ? ` (and ${answer.more} more)` : "";
      stamp(`${answer.batches.length} batch(es)${more} on ${answer.conn_id}${hidden ? ` (${hidden})` : ""}`);
      schedule(load, answer.batches, answer.refresh_seconds);
    }
    document.getElementById("conn").addEventListener("change", (event) => {
      params.set("conn_id", event.target.value);
      location.search = params.toString();
    });
    await load();
  }

  (view === "task" ? taskView() : batchesView()).catch((err) => message(String(err)));
})();
