// flowd console: the one script, compiled into the binary. Pages work without it; it
// only asks for a confirmation before a button that sends requests to GHL again or
// throws runs away.
document.addEventListener("submit", function (event) {
  var button = event.submitter;
  if (!button) return;
  var text = button.textContent || "";
  if (/^(Replay \d+|Discard|It was not)/.test(text) && !window.confirm(text + "?")) {
    event.preventDefault();
  }
});
