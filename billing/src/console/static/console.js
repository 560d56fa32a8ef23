// Tollgate billing console: the little behaviour the pages need, nothing they depend on.
// Served from the binary; no inline script anywhere (the Content-Security-Policy forbids it).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Filter forms marked data-autosubmit apply as soon as a select changes.
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (el) {
    el.addEventListener("change", function () { el.form.requestSubmit(); });
  });
  // Actions that change data ask first when they say so.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });
  // Chart points show their value on hover (the <title> does too, for keyboards and readers).
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    var out = svg.parentElement.querySelector(".chart-readout");
    if (!out) { return; }
    svg.querySelectorAll("[data-v]").forEach(function (p) {
      p.addEventListener("mouseenter", function () {
        out.textContent = p.getAttribute("data-k") + ": " + p.getAttribute("data-v");
      });
    });
  });
  // Times in the header are UTC; show the reader's local time beside them as a tooltip.
  document.querySelectorAll("time[datetime]").forEach(function (t) {
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) { t.title = d.toLocaleString(); }
  });
});
