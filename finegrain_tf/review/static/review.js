// Keyboard shortcuts of the review card: y yes, n no, s skip, u undo. Each key presses the
// matching button, so the page works the same with or without a keyboard (tablets tap them).
(function () {
  "use strict";
  var KEYS = { y: "btn-yes", n: "btn-no", s: "btn-skip", u: "btn-undo" };
  var busy = false;  // one submission per card: a second key press waits for the next page

  document.addEventListener("submit", function (event) {
    if (busy) { event.preventDefault(); return; }
    busy = true;
    document.body.classList.add("busy");
  });
  window.addEventListener("pageshow", function () {  // back/forward cache restores a live page
    busy = false;
    document.body.classList.remove("busy");
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    var id = KEYS[(event.key || "").toLowerCase()];
    var button = id && document.getElementById(id);
    if (!button || busy) return;
    event.preventDefault();
    button.form.requestSubmit(button);
  });
})();
