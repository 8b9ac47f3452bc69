// BioImage Gateway's JupyterLab extension, written as a module-federation
// container by hand: it needs no shared JupyterLab packages (only the app's
// command registry and fetch), so it needs no webpack build either.
(function () {
  "use strict";
  var NAME = "bioimage-gateway-lab";

  function pageConfig() {
    var el = document.getElementById("jupyter-config-data");
    return el ? JSON.parse(el.textContent) : {};
  }

  // Jupyter servers under JupyterHub check the XSRF token on every cookie-authenticated
  // API request, GET included; JupyterLab's own requests send it the same way.
  function xsrfHeaders() {
    var match = document.cookie.match("\\b_xsrf=([^;]*)\\b");
    return match ? { "X-XSRFToken": decodeURIComponent(match[1]) } : {};
  }

  function notify(app, message, type) {
    return app.commands.execute("apputils:notify", {
      message: message, type: type || "warning", options: { autoClose: false }
    });
  }

  var walltimePlugin = {
    id: NAME + ":walltime-warning",
    description: "Warns before the session's Slurm job reaches its walltime.",
    autoStart: true,
    activate: function (app) {
      var base = pageConfig().baseUrl || "/";
      var warned = {};
      function check() {
        fetch(base + "bioimage-gateway/session",
              { credentials: "same-origin", headers: xsrfHeaders() })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (info) {
            if (!info || info.seconds_left === null || info.seconds_left === undefined) { return; }
            var minutes = Math.max(0, Math.floor(info.seconds_left / 60));
            var level = info.seconds_left <= 300 ? "final" : "first";
            if (info.seconds_left <= info.warning_seconds && !warned[level]) {
              warned[level] = true;
              notify(app, "Your session (Slurm job " + info.job_id + ") ends in " + minutes +
                " minutes, at " + info.end_time + ". Save your work; running kernels stop then.",
                level === "final" ? "error" : "warning"
              ).catch(function () { warned[level] = false; });  // try again next minute
            }
          })
          .catch(function () { /* the server is restarting or gone: nothing to say */ });
      }
      // The notification commands exist once the application is restored.
      app.restored.then(function () {
        check();
        setInterval(check, 60000);
      });
    }
  };

  var EXAMPLE = "bioimage-gateway/getting-started.ipynb";  // copied by extensions/examples.py
  var OPEN_EXAMPLE = NAME + ":open-getting-started";

  function launcherPlugin(ILauncher) {
    return {
      id: NAME + ":launcher",
      description: "A launcher card that opens the getting-started notebook.",
      autoStart: true,
      requires: [ILauncher],
      activate: function (app, launcher) {
        app.commands.addCommand(OPEN_EXAMPLE, {
          label: "BioImage Gateway: getting started",
          caption: "Browse, stage and view your iRODS and OMERO data; start Dask",
          execute: function () { return app.commands.execute("docmanager:open", { path: EXAMPLE }); }
        });
        launcher.add({ command: OPEN_EXAMPLE, category: "Notebook", rank: 0 });
      }
    };
  }

  // JupyterLab hands its shared modules over in init(); the launcher's token must be
  // the very object JupyterLab's own launcher plugin provides, so it comes from there.
  var shareScope = null;
  function loadShared(name) {
    var versions = shareScope && shareScope[name];
    if (!versions) { return Promise.reject(new Error("no shared module " + name)); }
    var version = Object.keys(versions).sort().pop();
    return Promise.resolve(versions[version].get()).then(function (factory) { return factory(); });
  }

  var _JUPYTERLAB = (window._JUPYTERLAB = window._JUPYTERLAB || {});
  _JUPYTERLAB[NAME] = {
    init: function (scope) { shareScope = scope; return Promise.resolve(); },
    get: function (module) {
      if (module !== "./extension") {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      return loadShared("@jupyterlab/launcher")
        .then(function (launcherModule) { return [walltimePlugin, launcherPlugin(launcherModule.ILauncher)]; })
        .catch(function () { return [walltimePlugin]; })
        .then(function (plugins) {
          return function () { return { __esModule: true, default: plugins }; };
        });
    }
  };
})();
