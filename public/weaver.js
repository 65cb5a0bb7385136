// Weaver's small additions to Chainlit's page (loaded through custom_js in .chainlit/config.toml).
// Each one only reacts to what the page already shows; nothing here talks to the server.
(function () {
  "use strict";

  // Files panel (ui/outputs.py): a file's name links to its download, titled with its full name.
  // The download keeps that name (the server's answer names no file).
  document.addEventListener(
    "click",
    function (event) {
      var link = event.target instanceof Element ? event.target.closest("#side-view-content a[title]") : null;
      if (link && link.getAttribute("href").indexOf("/project/file/") !== -1) {
        link.setAttribute("download", link.getAttribute("title").split("/").pop());
      }
    },
    true
  );

  // A file the browser refuses: Chainlit shows "File type must be text/*,.csv,…" with every MIME type.
  var REFUSED = "File type must be ";
  function readableRefusal(text) {
    var kinds = text.slice(REFUSED.length).split(",").filter(function (item, index, all) {
      return item.charAt(0) === "." && all.indexOf(item) === index;
    });
    return "This kind of file cannot be added here. You can add " + kinds.join(" ") + " files.";
  }

  // A chart that finishes loading after the view followed its answer grows the chat under the
  // view: if the view was at the end of the chat, or the chart is cut at the bottom, go on to the end.
  var atEnd = new WeakMap();
  document.addEventListener(
    "scroll",
    function (event) {
      var box = event.target;
      if (box instanceof Element) atEnd.set(box, box.scrollHeight - box.scrollTop - box.clientHeight < 40);
    },
    true
  );
  function followImage(image) {
    var box = image.closest(".overflow-y-auto");
    if (!box || box.closest("#side-view-content")) return;
    var view = box.getBoundingClientRect();
    var picture = image.getBoundingClientRect();
    var cut = picture.top < view.bottom && picture.bottom > view.bottom;
    if (cut || atEnd.get(box)) box.scrollTop = box.scrollHeight;
  }
  document.addEventListener(
    "load",
    function (event) {
      if (event.target instanceof HTMLImageElement) followImage(event.target);
    },
    true
  );

  // Chainlit's toasts that name its internals: said in words a user knows.
  var NOT_FOUND = "Couldn't resume chat: Thread not found.";
  function reworded(text) {
    if (text.indexOf(REFUSED) === 0) return readableRefusal(text);
    if (text === NOT_FOUND) return "That chat was not found: it was deleted, or it is not yours. Here is a new chat.";
    return null;
  }

  new MutationObserver(function (changes) {
    changes.forEach(function (change) {
      change.addedNodes.forEach(function (node) {
        if (!(node instanceof Element)) return;
        node.querySelectorAll("[data-sonner-toast] [data-title]").forEach(function (title) {
          var text = reworded(title.textContent);
          if (text) title.textContent = text;
        });
      });
    });
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
