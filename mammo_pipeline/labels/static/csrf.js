// mammo labeling app: send the session's CSRF token (from <meta name="csrf-token">) with every state change.
// htmx requests carry it through hx-headers on <body> and the listener below; plain form posts (sign in,
// sign out) get it as a hidden csrf_token field just before they are submitted.
(function () {
  "use strict";
  const token = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (!form || (form.getAttribute("method") || "get").toLowerCase() !== "post") return;
    let field = form.querySelector('input[name="csrf_token"]');
    if (!field) {
      field = document.createElement("input");
      field.type = "hidden";
      field.name = "csrf_token";
      form.appendChild(field);
    }
    field.value = token();
  }, true);
  document.addEventListener("htmx:configRequest", (e) => {
    const t = token();
    if (t) e.detail.headers["X-CSRF-Token"] = t;
  });
})();
