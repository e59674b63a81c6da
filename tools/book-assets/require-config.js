// Loaded between require.js and the widget manager's embed-amd.js (see nb_ipywidgets_js in
// _config.yml). The bundle computes where its fonts live from each AMD module's URL, which
// require.js derives from the module id relative to the *page*; mapping the ids onto this copy
// makes those URLs point next to embed-amd.js, at any page depth, over http and from file://.
(function () {
  "use strict";
  var me = document.currentScript && document.currentScript.src;
  if (!me || typeof window.require === "undefined") {
    return;
  }
  var dir = me.slice(0, me.lastIndexOf("/") + 1) + "html-manager/";
  var ids = [
    "@jupyter-widgets/base",
    "@jupyter-widgets/base7",
    "@jupyter-widgets/controls",
    "@jupyter-widgets/controls7",
    "@jupyter-widgets/output",
    "@jupyter-widgets/html-manager",
  ];
  var paths = { "@jupyter-widgets/html-manager/dist": dir.slice(0, -1) };
  ids.forEach(function (id) {
    paths[id] = dir + id.split("/")[1];
  });
  window.require.config({ paths: paths });
})();
