// mammo labeling app: view controls (CSS filters, zoom), help, hint toggle and error toasts.
// The label keys themselves are htmx triggers on the key bar (see components.key_bar).
(function () {
  "use strict";
  const TYPING = "textarea,select,input:not([type=range]):not([type=checkbox])";
  // Used by the key bar's hx-trigger filters: no labels while typing or with a modifier held.
  window.mammoKeyOk = function (target, ctrl, meta, alt) {
    return !(ctrl || meta || alt || (target && target.closest && target.closest(TYPING)));
  };
  const root = () => document.getElementById("stage");
  const saved = JSON.parse(localStorage.getItem("mammo-view") || "{}");
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
    document.addEventListener("click", (e) => {
      if (e.target.id === "help") toggleHelp(false);
      if (e.target.id !== "shot") return;
      const r = e.target.getBoundingClientRect();
      const stage = root();
      stage.style.setProperty("--ox", `${((e.clientX - r.left) / r.width) * 100}%`);
      stage.style.setProperty("--oy", `${((e.clientY - r.top) / r.height) * 100}%`);
      setVar("--zoom", Number(saved["--zoom"] || 1) > 1 ? 1 : 2);
    });
    document.addEventListener("keydown", (e) => {
      if (!window.mammoKeyOk(e.target, e.ctrlKey, e.metaKey, e.altKey)) return;
      if (e.key === "Backspace") e.preventDefault();
      const actions = {
        "?": () => toggleHelp(),
        Escape: () => toggleHelp(false),
        h: () => localStorage.setItem("mammo-hide-hint", document.body.classList.toggle("hide-hint") ? "1" : "0"),
        "+": () => zoomBy(0.5), "=": () => zoomBy(0.5), "-": () => zoomBy(-0.5), "0": () => setVar("--zoom", 1),
        i: () => setVar("--invert", Number(saved["--invert"] || 0) ? 0 : 1),
      };
      if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
    });
    document.body.addEventListener("htmx:responseError", (e) => {
      const xhr = e.detail.xhr;
      toast(xhr.responseText.replace(/<[^>]+>/g, "") || `error ${xhr.status}`);
      // Someone relabeled this image meanwhile: show its fresh state (the key press wrote nothing).
      const id = document.getElementById("image_id");
      if (xhr.status === 409 && e.detail.pathInfo.requestPath === "/label" && id && id.value) {
        const q = document.getElementById("q").value;
        htmx.ajax("GET", `/card?image_id=${encodeURIComponent(id.value)}&q=${encodeURIComponent(q)}`,
          { target: "#card", swap: "outerHTML" });
      }
    });
    // A new image starts unzoomed; brightness, contrast and invert carry over.
    document.body.addEventListener("htmx:afterSwap", (e) => { if (e.detail.target.id === "card") setVar("--zoom", 1); });
    document.body.addEventListener("htmx:sendError", () => toast("the server did not answer"));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
