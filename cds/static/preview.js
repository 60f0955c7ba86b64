// The card preview: send the pasted document to this service and draw the cards it answers with.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child) node.appendChild(child);
    return node;
  };
  const INDICATORS = new Set(["info", "warning", "critical"]);

  function setStatus(text, isError, done) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
    if (done === false) delete $("status").dataset.done;
    else $("status").dataset.done = "true"; // an answer (or a failure) is on screen
  }

  function target() {
    const service = $("service").value;
    if (service === "evaluate") {
      const now = $("now").value;
      return "/evaluate" + (now ? "?now=" + encodeURIComponent(now) : "");
    }
    return "/cds-services/" + encodeURIComponent(service);
  }

  function renderOutcome(status, body) {
    const box = el("div", { class: "outcome", "data-status": String(status) });
    const issues = body && Array.isArray(body.issue) ? body.issue : [];
    for (const issue of issues) {
      const where = Array.isArray(issue.expression) ? " (" + issue.expression.join(", ") + ")" : "";
      box.appendChild(el("p", { text: (issue.diagnostics || issue.code || "error") + where }));
    }
    if (status === 412) {
      box.appendChild(el("p", { text: "412: a prefetch key is missing. An EHR (and the CDS Hooks sandbox) may show this as " +
        "\"no recommendations\": it is not a healthy patient. Send the key, or null for no data." }));
    }
    if (status === 401) {
      box.appendChild(el("p", { text: "401: paste a JWT whose aud is this page's call URL (" + location.origin + target().split("?")[0] + "); see docs/integrating.md." }));
    }
    return box;
  }

  function renderWhy(card) {
    const explanation = (card.extension || {})["cramp-cds-explanation"];
    if (!explanation) return null;
    const list = el("ul");
    for (const rule of explanation.rules || []) {
      const item = el("li", {}, el("code", { text: rule.rule }));
      if ((rule.facts || []).length) item.appendChild(document.createTextNode(": " + rule.facts.join("; ")));
      if ((rule.evidence || []).length) item.appendChild(el("div", { class: "evidence", text: "evidence: " + rule.evidence.join(", ") }));
      list.appendChild(item);
    }
    return el("details", { class: "why" }, el("summary", { text: "Why this card (rule pack " + explanation.packVersion + ")" }), list);
  }

  function renderCard(card) {
    const indicator = INDICATORS.has(card.indicator) ? card.indicator : "info";
    const node = el("article", { class: "card " + indicator, "data-indicator": indicator });
    node.appendChild(el("div", { class: "card-head" },
      el("span", { class: "indicator", text: indicator }),
      el("p", { class: "card-summary", text: card.summary || "" })));
    if (card.source) {
      const topic = card.source.topic ? " · " + (card.source.topic.display || card.source.topic.code) : "";
      node.appendChild(el("p", { class: "card-source", text: (card.source.label || "") + topic }));
    }
    if (card.detail) node.appendChild(el("div", { class: "card-detail" }, window.renderMarkdown(card.detail)));
    if ((card.suggestions || []).length) {
      const box = el("div", { class: "suggestions" });
      for (const suggestion of card.suggestions) {
        const button = el("button", { type: "button", class: "suggestion", title: "Would create: " +
          (suggestion.actions || []).map((a) => a.description || a.type).join("; "), text: suggestion.label });
        button.addEventListener("click", () => button.classList.toggle("chosen"));
        box.appendChild(button);
      }
      node.appendChild(box);
    }
    if ((card.links || []).length) {
      const box = el("div", { class: "links" });
      for (const link of card.links) {
        if (!/^https?:\/\//.test(link.url || "")) continue;
        box.appendChild(el("a", { href: link.url, target: "_blank", rel: "noopener noreferrer", text: link.label }));
      }
      node.appendChild(box);
    }
    const why = renderWhy(card);
    if (why) node.appendChild(why);
    return node;
  }

  async function show() {
    const cards = $("cards");
    cards.replaceChildren();
    let document_;
    try {
      document_ = JSON.parse($("document").value);
    } catch (error) {
      setStatus("Not JSON: " + error.message, true);
      return;
    }
    const headers = { "Content-Type": "application/json" };
    const token = $("token").value.trim();
    if (token) headers.Authorization = "Bearer " + token.replace(/^Bearer\s+/i, "");
    delete $("status").dataset.count;
    setStatus("Asking " + target() + " ...", false, false);
    let response;
    try {
      response = await fetch(target(), { method: "POST", headers, body: JSON.stringify(document_) });
    } catch (error) {
      setStatus("The service did not answer: " + error.message, true);
      return;
    }
    const text = await response.text();
    let body = null;
    try { body = JSON.parse(text); } catch (error) { body = null; }
    const demo = response.headers.get("CDS-Demo-Now");
    const asOf = demo ? " (demo clock: as of " + demo.slice(0, 10) + ")" : "";
    if (!response.ok) {
      setStatus("HTTP " + response.status + asOf, true);
      cards.appendChild(renderOutcome(response.status, body));
      return;
    }
    const list = body && Array.isArray(body.cards) ? body.cards : [];
    for (const card of list) cards.appendChild(renderCard(card));
    $("status").dataset.count = String(list.length);
    setStatus((list.length === 1 ? "1 card" : list.length + " cards") + asOf, false);
  }

  function load(file) {
    file.text().then((text) => {
      $("document").value = text;
      show();
    });
  }

  $("show").addEventListener("click", show);
  $("file").addEventListener("change", (event) => { if (event.target.files[0]) load(event.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) load(event.dataTransfer.files[0]);
  });
})();
