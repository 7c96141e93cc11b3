// The review queue: a person marks rows keep or drop; "save" downloads decisions.json, the file
// `sftlab data apply-review DIR decisions.json` applies. No server: the file is built in memory.
"use strict";
(function () {
  const decisions = new Map();
  let unsaved = false; // decisions changed since the last download
  const save = document.getElementById("save-decisions");
  const clear = document.getElementById("clear-decisions");
  const count = document.getElementById("decision-count");

  function show() {
    for (const row of document.querySelectorAll("[data-row]")) {
      const chosen = decisions.get(row.dataset.row) || "";
      row.dataset.decided = chosen;
      for (const button of row.querySelectorAll("button[data-decision]")) {
        button.setAttribute("aria-pressed", String(button.dataset.decision === chosen));
      }
    }
    const n = decisions.size;
    count.textContent = n ? n + (n === 1 ? " decision" : " decisions") : "no decisions yet";
    save.disabled = n === 0;
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-decision]");
    if (!button) return;
    const id = button.closest("[data-row]").dataset.row;
    if (decisions.get(id) === button.dataset.decision) {
      decisions.delete(id); // a second click takes the decision back
    } else {
      decisions.set(id, button.dataset.decision);
    }
    unsaved = true;
    show();
  });

  clear.addEventListener("click", function () {
    decisions.clear();
    unsaved = false;
    show();
  });

  save.addEventListener("click", function () {
    const sorted = Array.from(decisions.entries()).sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const body = { version: 1, audit: document.body.dataset.audit, decisions: Object.fromEntries(sorted) };
    const blob = new Blob([JSON.stringify(body, null, 2) + "\n"], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "decisions.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    unsaved = false;
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 10000);
  });

  // The decisions live only in this page until saved: ask before a reload or close loses them.
  window.addEventListener("beforeunload", function (event) {
    if (unsaved && decisions.size) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  show();
})();
