// mammo labeling app: the label keys, view controls (CSS filters, zoom, full-resolution loupe, heat map),
// help, hint toggle and error toasts.
//
// A key labels the image ON SCREEN: its id is read from the displayed slide at the moment of the key press and
// travels with the request. The card carries the next images already loaded (hidden slides), so the next one
// shows at once, before the server answers; requests go out one at a time, in order (a promise chain).
(function () {
  "use strict";
  const TYPING = "textarea,select,input:not([type=range]):not([type=checkbox])";
  // No labels while typing or with a modifier held.
  window.mammoKeyOk = function (target, ctrl, meta, alt) {
    return !(ctrl || meta || alt || (target && target.closest && target.closest(TYPING)));
  };
  const root = () => document.getElementById("stage");
  const saved = JSON.parse(localStorage.getItem("mammo-view") || "{}");
  const pending = new Set(); // ids labeled or skipped here whose request has not been answered
  let chain = Promise.resolve();
  let pointer = { x: 0.5, y: 0.5 }; // over the image, as fractions of its width and height

  function setVar(name, value) {
    const stage = root();
    if (!stage) return;
    stage.style.setProperty(name, value);
    saved[name] = value;
    localStorage.setItem("mammo-view", JSON.stringify(saved));
    const slider = document.querySelector(`input[data-var="${name}"]`);
    if (slider && slider.value !== String(value)) slider.value = value;
    if (name === "--invert") document.getElementById("invert").checked = value === 1;
    if (name === "--zoom") stage.classList.toggle("zoomed", Number(value) > 1);
  }
  function zoomBy(step) {
    const z = Number(saved["--zoom"] || 1);
    setVar("--zoom", Math.min(4, Math.max(1, z + step)));
  }
  function toast(text) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(el._timer);
    el._timer = setTimeout(() => el.classList.remove("show"), 2500);
  }
  function toggleHelp(show) {
    const help = document.getElementById("help");
    help.hidden = show === undefined ? !help.hidden : !show;
  }

  // -- the card: the slide on screen and the ones loaded behind it ------------------------------------------
  const shown = () => document.querySelector("#card .slide:not([hidden])");
  function show(slide) {
    const card = document.getElementById("card");
    document.querySelectorAll("#card .slide").forEach((s) => { s.hidden = s !== slide; });
    document.querySelectorAll("#card img.shot").forEach((img) => img.removeAttribute("id"));
    const id = slide ? slide.dataset.imageId : "";
    if (slide) slide.querySelector("img.shot").id = "shot";
    document.getElementById("image_id").value = id;
    document.getElementById("seen_event").value = slide ? slide.dataset.seenEvent : "";
    if (card) card.dataset.imageId = id;
    card.classList.toggle("waiting", !slide && !!card.querySelector(".slides"));
    closeOverlays();
    setVar("--zoom", 1); // a new image starts unzoomed; brightness, contrast and invert carry over
  }
  function advance() {
    const cur = shown();
    if (!cur) return;
    let next = cur.nextElementSibling;
    while (next && pending.has(next.dataset.imageId)) next = next.nextElementSibling;
    cur.remove();
    show(next && next.classList.contains("slide") ? next : null);
  }
  // Put the server's fresher list of next images behind the one on screen (never replacing what is shown).
  function merge(fresh) {
    const card = document.getElementById("card");
    const cur = shown();
    if (!cur || !card || !fresh.querySelector(".slide")) {
      // nothing on screen (the burst outran the loaded images): show the first image not labeled meanwhile
      fresh.querySelectorAll(".slide").forEach((s) => { if (pending.has(s.dataset.imageId)) s.remove(); });
      replaceCard(fresh);
      return;
    }
    const box = card.querySelector(".slides");
    box.querySelectorAll(".slide[hidden]").forEach((s) => s.remove());
    fresh.querySelectorAll(".slide").forEach((s) => {
      const id = s.dataset.imageId;
      if (id === cur.dataset.imageId || pending.has(id)) return;
      s.hidden = true;
      s.querySelector("img.shot").removeAttribute("id");
      box.append(s);
    });
    const note = fresh.querySelector(".qnote");
    if (note && card.querySelector(".qnote")) card.querySelector(".qnote").replaceWith(note);
  }
  function replaceCard(fresh) {
    const card = document.getElementById("card");
    card.replaceWith(fresh);
    htmx.process(fresh);
    show(fresh.querySelector(".slide:not([hidden])") || fresh.querySelector(".slide") || null);
  }
  function applyOob(doc) {
    doc.querySelectorAll("[hx-swap-oob]").forEach((el) => {
      const old = document.getElementById(el.id);
      el.removeAttribute("hx-swap-oob");
      if (old) { old.replaceWith(el); htmx.process(el); }
    });
  }
  // Extra request headers other modules may need (e.g. a CSRF token in <meta name="csrf-token">).
  function headers() {
    const h = { "HX-Request": "true" };
    const token = document.querySelector('meta[name="csrf-token"]');
    if (token) h["X-CSRF-Token"] = token.content;
    return h;
  }
  function send(path, fields, onCard) {
    chain = chain.then(async () => {
      let r, text;
      try {
        r = await fetch(path, { method: "POST", body: new URLSearchParams(fields), headers: headers() });
        text = await r.text();
      } catch (e) {
        toast("the server did not answer");
        if (fields.image_id) pending.delete(fields.image_id);
        return;
      }
      if (fields.image_id) pending.delete(fields.image_id);
      if (!r.ok) {
        toast(text.replace(/<[^>]+>/g, "") || `error ${r.status}`);
        // Someone relabeled this image meanwhile: show its fresh state (the key press wrote nothing).
        if (r.status === 409 && path === "/label") {
          const q = document.getElementById("q").value;
          const fresh = await fetch(`/card?image_id=${encodeURIComponent(fields.image_id)}&q=${encodeURIComponent(q)}`,
            { headers: headers() });
          if (fresh.ok) replaceCard(parse(await fresh.text()).getElementById("card"));
        }
        return;
      }
      const doc = parse(text);
      applyOob(doc);
      const card = doc.getElementById("card");
      if (card) onCard(card);
      document.dispatchEvent(new CustomEvent("mammo:answered", { detail: { path, fields } }));
    });
  }
  const parse = (html) => new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
  const queueName = () => (document.getElementById("q") || {}).value || "unlabeled";

  function act(action, label) {
    if (action === "undo") { send("/undo", { q: queueName() }, replaceCard); return; }
    const cur = shown();
    if (!cur) { toast("the next image is still on its way"); return; }
    const fields = { image_id: cur.dataset.imageId, seen_event: cur.dataset.seenEvent, q: queueName() };
    if (action === "label") fields.label = label;
    pending.add(fields.image_id);
    advance();
    send(action === "label" ? "/label" : "/skip", fields, merge);
  }

  // -- full-resolution loupe and heat map ---------------------------------------------------------------------
  function closeOverlays() {
    const loupe = document.getElementById("loupe");
    if (loupe) loupe.hidden = true;
    document.querySelectorAll(".heat").forEach((h) => h.remove());
  }
  function loupe() {
    const cur = shown();
    const box = document.getElementById("loupe");
    if (!cur || !box) return;
    const img = document.getElementById("loupe-img");
    const url = `/zoom/${cur.dataset.imageId}?x=${pointer.x.toFixed(4)}&y=${pointer.y.toFixed(4)}`;
    fetch(url, { headers: headers() }).then(async (r) => {
      if (!r.ok) { toast((await r.text()).replace(/<[^>]+>/g, "")); return; }
      img.src = URL.createObjectURL(await r.blob());
      box.hidden = false;
    });
  }
  function heatmap() {
    const cur = shown();
    if (!cur) return;
    const old = cur.querySelector(".heat");
    if (old) { old.remove(); return; }
    fetch(`/heatmap/${cur.dataset.imageId}`, { headers: headers() }).then(async (r) => {
      if (!r.ok) { toast((await r.text()).replace(/<[^>]+>/g, "")); return; }
      const heat = Object.assign(document.createElement("img"), { className: "heat", alt: "model heat map" });
      heat.src = URL.createObjectURL(await r.blob());
      cur.querySelector(".viewer").append(heat);
    });
  }

  function init() {
    for (const [name, value] of Object.entries(saved)) setVar(name, value);
    if (localStorage.getItem("mammo-hide-hint") === "1") document.body.classList.add("hide-hint");
    document.querySelectorAll("input[data-var]").forEach((el) =>
      el.addEventListener("input", () => setVar(el.dataset.var, Number(el.value))));
    const invert = document.getElementById("invert");
    if (invert) invert.addEventListener("change", () => setVar("--invert", invert.checked ? 1 : 0));
    const reset = document.getElementById("reset-view");
    if (reset) reset.addEventListener("click", () => {
      for (const [n, v] of [["--bright", 1], ["--contrast", 1], ["--zoom", 1], ["--invert", 0]]) setVar(n, v);
    });
    const helpButton = document.getElementById("help-button");
    if (helpButton) helpButton.addEventListener("click", () => toggleHelp());
    document.querySelectorAll("#keys button[data-action]").forEach((b) =>
      b.addEventListener("click", () => act(b.dataset.action, b.dataset.label)));
    document.addEventListener("click", (e) => {
      if (e.target.id === "help") toggleHelp(false);
      if (e.target.id === "loupe" || e.target.id === "loupe-img") closeOverlays();
      if (e.target.id !== "shot") return;
      const r = e.target.getBoundingClientRect();
      const stage = root();
      stage.style.setProperty("--ox", `${((e.clientX - r.left) / r.width) * 100}%`);
      stage.style.setProperty("--oy", `${((e.clientY - r.top) / r.height) * 100}%`);
      setVar("--zoom", Number(saved["--zoom"] || 1) > 1 ? 1 : 2);
    });
    document.addEventListener("mousemove", (e) => {
      if (e.target.id !== "shot") return;
      const r = e.target.getBoundingClientRect();
      pointer = { x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
                  y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)) };
    });
    document.addEventListener("wheel", (e) => {
      if (e.target.id !== "shot" && !e.target.closest("#loupe")) return;
      e.preventDefault();
      if (e.deltaY < 0) loupe(); else closeOverlays();
    }, { passive: false });
    document.addEventListener("keydown", (e) => {
      if (!window.mammoKeyOk(e.target, e.ctrlKey, e.metaKey, e.altKey)) return;
      if (e.key === "Backspace") e.preventDefault();
      if (e.repeat) return; // holding a key down labels once
      const digit = /^Numpad([1-4])$/.exec(e.code);
      const label = ["1", "2", "3", "4"].includes(e.key) ? e.key : digit ? digit[1] : null;
      if (label) { e.preventDefault(); act("label", label); return; }
      const actions = {
        s: () => act("skip"), z: () => act("undo"), Backspace: () => act("undo"),
        "?": () => toggleHelp(),
        Escape: () => { toggleHelp(false); closeOverlays(); },
        m: () => localStorage.setItem("mammo-hide-hint", document.body.classList.toggle("hide-hint") ? "1" : "0"),
        h: heatmap, f: loupe,
        "+": () => zoomBy(0.5), "=": () => zoomBy(0.5), "-": () => zoomBy(-0.5), "0": () => setVar("--zoom", 1),
        i: () => setVar("--invert", Number(saved["--invert"] || 0) ? 0 : 1),
      };
      if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
    });
    document.body.addEventListener("htmx:responseError", (e) => {
      toast(e.detail.xhr.responseText.replace(/<[^>]+>/g, "") || `error ${e.detail.xhr.status}`);
    });
    // A card fetched by htmx (a click in the recent list) starts on its first slide.
    document.body.addEventListener("htmx:afterSwap", () => {
      if (document.querySelector("#card .slide")) show(shown() || document.querySelector("#card .slide"));
    });
    document.body.addEventListener("htmx:sendError", () => toast("the server did not answer"));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
