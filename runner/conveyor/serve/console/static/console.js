// The execution page: replace the timeline with what the live stream sends (live.py).
(function () {
  var root = document.getElementById("timeline");
  if (!root || !window.EventSource) return;
  var source = new EventSource(root.dataset.stream);
  source.addEventListener("timeline", function (e) {
    root.innerHTML = JSON.parse(e.data).html; // escaped by the server (html.py)
    root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
  });
  source.addEventListener("finished", function () { source.close(); root.dataset.finished = "1"; });
  source.addEventListener("gone", function () { source.close(); });
})();
