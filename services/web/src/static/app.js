// coursemesh dashboard: progressive enhancement over server-rendered pages. Forms work without this
// file; with it they submit in place, show the service's messages next to their fields, and the
// page follows live updates (server-sent events). No framework, no build step.
"use strict";

(function () {
  const csrf = document.body.dataset.csrf || "";

  // ---- "12 s ago" that stays true ----------------------------------------------------------
  function ago(date) {
    const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }
  function tick() {
    for (const el of document.querySelectorAll("time[data-relative]")) {
      const text = ago(new Date(el.getAttribute("datetime")));
      if (el.textContent !== text) el.textContent = text;
    }
  }
  setInterval(tick, 1000);

  // ---- Replacing and inserting server-rendered fragments ---------------------------------------
  function fragment(markup) {
    const template = document.createElement("template");
    template.innerHTML = markup.trim();
    return template.content.firstElementChild;
  }
  function containerFor(element) {
    if (element.matches("tr[data-monitor]")) return document.getElementById("monitor-rows");
    if (element.matches("tr[data-course]")) return document.getElementById("course-rows");
    if (element.matches("[data-request]")) return document.getElementById("request-list");
    if (element.matches("[data-job]")) return document.getElementById("job-list");
    return null;
  }
  /**
   * Replaces `existing` with `fresh`, keeping the focus on the same form's button: matched by the
   * form's action and the button's label, since several forms may share one action (Drop per student).
   */
  function swap(existing, fresh) {
    const focused = existing.contains(document.activeElement) ? document.activeElement : null;
    const focusedForm = focused && focused.closest("form");
    existing.replaceWith(fresh);
    if (!focusedForm) return fresh;
    const inForm = 'form[action="' + CSS.escape(focusedForm.getAttribute("action")) + '"] button';
    const label = focused.getAttribute("aria-label");
    const again = (label && fresh.querySelector(inForm + '[aria-label="' + CSS.escape(label) + '"]')) || fresh.querySelector(inForm);
    if (again) again.focus();
    return fresh;
  }
  /**
   * Brings `existing` up to date with `fresh` one level deep: only the children (table cells, job
   * parts) that differ are replaced, so a button being pressed, and whatever has the focus, stay
   * put while live updates arrive.
   */
  function morph(existing, fresh) {
    const ownText = function (el) {
      return Array.from(el.childNodes).filter(function (n) { return n.nodeType === 3; }).map(function (n) { return n.textContent.trim(); }).join("");
    };
    if (existing.tagName !== fresh.tagName || existing.children.length !== fresh.children.length || ownText(existing) !== ownText(fresh)) return swap(existing, fresh);
    for (const attribute of Array.from(existing.attributes)) if (!fresh.hasAttribute(attribute.name)) existing.removeAttribute(attribute.name);
    for (const attribute of Array.from(fresh.attributes)) if (existing.getAttribute(attribute.name) !== attribute.value) existing.setAttribute(attribute.name, attribute.value);
    Array.from(fresh.children).forEach(function (child, i) {
      const current = existing.children[i];
      if (current.outerHTML !== child.outerHTML) swap(current, child);
    });
    return existing;
  }
  // Each placement of an item (by a form or a live update) is numbered, so a stream's "present"
  // set, listed after the stream was asked for, never takes off an item placed since then.
  let placements = 0;
  const placedAt = new Map();
  /** Puts a fragment in place of the element with its id, or first in its list; returns the element. */
  function place(markup) {
    let element = fragment(markup);
    if (!element) return null;
    if (element.id) placedAt.set(element.id, ++placements);
    const existing = element.id && document.getElementById(element.id);
    if (existing) element = morph(existing, element);
    else {
      const container = containerFor(element);
      if (!container) return null;
      container.prepend(element);
    }
    updateEmpty();
    follow(element);
    tick();
    return element;
  }
  function updateEmpty() {
    for (const empty of document.querySelectorAll("[data-empty]")) {
      const section = empty.closest("section");
      const list = section && section.querySelector("tbody, #request-list, #job-list");
      if (list) empty.hidden = list.children.length > 0;
    }
  }
  /** Takes an item (a row, a job, a request) off the page and says so. */
  function removeItem(element, message) {
    if (!element) return;
    const scope = element.closest("section") || element.parentElement;
    element.remove();
    updateEmpty();
    announce(message, scope);
  }
  function announce(text, scope) {
    const status = (scope && scope.closest("section") && scope.closest("section").querySelector("[data-live-status]")) || document.querySelector("[data-live-status]");
    if (status) status.textContent = text;
  }

  // ---- Forms: submit in place, the service's messages next to their fields -------------------
  function clearErrors(form) {
    for (const el of form.querySelectorAll("[data-error-for], [data-form-error]")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }
  function showErrors(form, data) {
    clearErrors(form);
    let first = null;
    const fields = data.fields || {};
    for (const name of Object.keys(fields)) {
      const slot = form.querySelector('[data-error-for="' + name + '"]');
      const control = form.querySelector('[name="' + name + '"]');
      if (slot) slot.textContent = fields[name];
      if (control) {
        control.setAttribute("aria-invalid", "true");
        first = first || control;
      }
    }
    const general = form.querySelector("[data-form-error]");
    if (general) general.textContent = data.error || "";
    else if (!first) announce(data.error || "That did not work.", form);
    if (first) first.focus();
  }
  async function send(form, body, headers) {
    const response = await fetch(form.action, { method: "POST", body: body, headers: Object.assign({ accept: "application/json", "x-csrf-token": csrf }, headers || {}), credentials: "same-origin" });
    if (response.status === 401) {
      location.assign("/signin");
      return null;
    }
    let data;
    try {
      data = await response.json();
    } catch (e) {
      data = { error: "Unexpected answer (HTTP " + response.status + "); reload the page." };
    }
    return { ok: response.ok, data: data };
  }
  function after(form, data) {
    clearErrors(form);
    const action = form.dataset.action;
    if (data.deleted) return removeItem(form.closest("tr, li, article"), "Deleted.");
    const requests = document.getElementById("request-list");
    if (action === "enroll" && requests && requests.hasAttribute("data-student") && requests.dataset.student !== data.studentId) {
      // A registrar enrolled someone other than the student whose requests are shown: show theirs.
      location.assign("/enrollment?student_id=" + encodeURIComponent(data.studentId));
      return;
    }
    if (data.html) place(data.html);
    if (data.message) announce(data.message, document.querySelector("[data-live-status]"));
    if (action === "create" || action === "enroll") {
      form.reset();
      const key = form.querySelector('[name="idempotency_key"]');
      if (key && crypto.randomUUID) key.value = crypto.randomUUID();
      announce(action === "enroll" ? "Request sent; the decision appears below." : "Added.", document.querySelector("[data-live-status]"));
    }
  }
  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.hasAttribute("data-upload")) return upload(event, form);
    if (!form.hasAttribute("data-enhance")) return;
    event.preventDefault();
    if (form.dataset.confirm && !confirm(form.dataset.confirm)) return;
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const result = await send(form, new URLSearchParams(new FormData(form)), { "content-type": "application/x-www-form-urlencoded" });
      if (!result) return;
      if (result.ok) after(form, result.data);
      else showErrors(form, result.data);
    } catch (e) {
      showErrors(form, { error: "The dashboard is not reachable; check your connection and try again." });
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  });

  // ---- Live updates --------------------------------------------------------------------------
  // A page keeps few streams open (browsers allow about six connections per site): one per list
  // ([data-live] tables), and one per kind of item being watched ([data-watch] jobs or requests),
  // reopened with the new set of ids when it changes.
  const streams = new Map();
  function listen(url, scope) {
    const source = new EventSource(url);
    // Items placed after this are newer than any "present" set this connection sends.
    let askedAt = placements;
    const onUpdate = function (event) {
      const data = JSON.parse(event.data);
      if (data.deleted) return removeItem(document.querySelector("[data-" + event.type + '="' + CSS.escape(data.id) + '"]'), "Deleted elsewhere.");
      if (data.html) place(data.html);
      if (data.change) announce(data.change.label + ": " + data.change.from + " → " + data.change.to, document.getElementById("monitor-rows"));
    };
    for (const kind of ["monitor", "course", "request", "job"]) source.addEventListener(kind, onUpdate);
    source.addEventListener("end", function () {
      source.close();
      for (const [key, value] of streams) if (value.source === source) streams.delete(key);
    });
    source.addEventListener("failure", function (event) {
      announce(JSON.parse(event.data).message, scope);
    });
    source.addEventListener("present", function (event) {
      // The items that exist as the stream (re)connected: those shown from before then that are not
      // among them were deleted while no stream could say so.
      const data = JSON.parse(event.data);
      const present = new Set(data.ids);
      for (const element of Array.from(document.querySelectorAll("[data-" + data.kind + "]"))) {
        if (present.has(element.getAttribute("data-" + data.kind)) || (placedAt.get(element.id) || 0) > askedAt) continue;
        removeItem(element, "Deleted elsewhere.");
      }
    });
    source.onerror = function () {
      // Reconnecting: the next connection's set is asked for from now on.
      askedAt = placements;
      if (source.readyState === EventSource.CLOSED) announce("Live updates stopped; reload the page to resume.", scope);
    };
    return source;
  }
  function follow(root) {
    const lists = [];
    if (root.matches && root.matches("[data-live]")) lists.push(root);
    if (root.querySelectorAll) lists.push.apply(lists, root.querySelectorAll("[data-live]"));
    for (const el of lists) {
      const url = el.getAttribute("data-live");
      if (!streams.has(url)) streams.set(url, { source: listen(url, el) });
    }
    for (const kind of ["jobs", "requests"]) {
      const items = Array.from(document.querySelectorAll('[data-watch="' + kind + '"]'));
      const ids = items.map(function (el) { return el.getAttribute("data-job") || el.getAttribute("data-request"); }).sort();
      const key = "watch:" + kind;
      const current = streams.get(key);
      if (current && current.ids === ids.join(",")) continue;
      if (current) current.source.close();
      streams.delete(key);
      if (ids.length === 0) continue;
      const url = "/live/" + kind + "?" + ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
      streams.set(key, { ids: ids.join(","), source: listen(url, items[0]) });
    }
  }
  follow(document);

  // ---- History in a modal dialog --------------------------------------------------------------
  const dialog = document.getElementById("history-dialog");
  let opener = null;
  document.addEventListener("click", async function (event) {
    const link = event.target instanceof Element && event.target.closest("a[data-history]");
    if (link && dialog && dialog.showModal) {
      event.preventDefault();
      opener = link;
      const body = dialog.querySelector("[data-dialog-body]");
      body.textContent = "Loading…";
      dialog.showModal();
      try {
        const response = await fetch(link.href + "?fragment=1", { headers: { accept: "text/html" }, credentials: "same-origin" });
        if (response.status === 401) return location.assign("/signin");
        body.innerHTML = await response.text();
        tick();
      } catch (e) {
        body.textContent = "The history could not be loaded.";
      }
    }
    if (event.target instanceof Element && event.target.closest("[data-close-dialog]")) dialog.close();
  });
  if (dialog) dialog.addEventListener("close", function () {
    // Back to the History button that opened it (found again if a live update replaced it).
    const target = opener && (opener.isConnected ? opener : document.querySelector('a[data-history="' + opener.dataset.history + '"]'));
    if (target) target.focus();
  });

  // ---- Uploads: drag and drop, streamed to ingest, then followed live -------------------------
  const zone = document.querySelector("[data-dropzone]");
  if (zone) {
    const input = zone.querySelector('input[type="file"]');
    zone.addEventListener("dragover", function (event) {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", function () {
      zone.classList.remove("over");
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
    });
  }
  async function upload(event, form) {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const result = await send(form, new FormData(form));
      if (!result) return;
      if (!result.ok) return showErrors(form, result.data);
      clearErrors(form);
      form.reset();
      const key = form.querySelector('[name="idempotency_key"]');
      if (key && crypto.randomUUID) key.value = crypto.randomUUID();
      place(result.data.html);
      announce("Uploaded; processing has started.", document.getElementById("job-list"));
    } catch (e) {
      showErrors(form, { error: "The upload did not reach the dashboard; check your connection and try again." });
    } finally {
      if (button) button.disabled = false;
    }
  }
})();
