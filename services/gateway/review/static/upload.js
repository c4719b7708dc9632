// The jobs page's upload card (templates/upload.html) and the job list's live progress.
// A chosen file is previewed on the server (POST /review/upload/preview: nothing kept), the columns found are
// shown, a column can be chosen by hand, and the same file with the same choices is then submitted
// (POST /review/upload). Every problem the server names is shown in #upload-error; nothing is submitted
// until the preview has passed.
(function () {
  "use strict";
  var card = document.getElementById("upload");
  var ROLES = ["job_title", "duties_description", "industry", "id"];
  var QUERY = { job_title: "title_column", duties_description: "duties_column", industry: "industry_column", id: "id_column" };

  // ---- live progress of the job list: poll the active jobs, reload when one ends (unless a file is chosen)
  var list = document.querySelector("[data-poll]");
  var busy = false;
  function poll() {
    var rows = Array.prototype.filter.call(document.querySelectorAll("tr[data-job]"), function (tr) {
      var status = tr.querySelector(".status");
      return status && (status.textContent === "queued" || status.textContent === "running");
    });
    if (!rows.length) return;
    var ids = rows.map(function (tr) { return tr.dataset.job; }).join(",");
    fetch(list.dataset.poll + "?ids=" + encodeURIComponent(ids), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (jobs) {
        var ended = false;
        jobs.forEach(function (job) {
          var tr = document.querySelector('tr[data-job="' + job.job_id + '"]');
          if (!tr) return;
          var status = tr.querySelector(".status");
          status.textContent = job.status;
          status.className = "status s-" + job.status;
          var bar = tr.querySelector(".bar span");
          if (bar && job.rows_total) bar.style.width = Math.round(100 * job.rows_done / job.rows_total) + "%";
          var done = tr.querySelector(".rows-done");
          if (done) done.textContent = job.rows_done + " / " + job.rows_total;
          if (job.status !== "queued" && job.status !== "running") ended = true;
        });
        if (ended && !busy) window.location.reload();  // the counts and links come with the finished job
        else setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  if (list) setTimeout(poll, 1500);

  if (!card) return;
  var input = document.getElementById("upload-file");
  var drop = document.getElementById("drop");
  var errorBox = document.getElementById("upload-error");
  var preview = document.getElementById("upload-preview");
  var summary = document.getElementById("upload-summary");
  var notes = document.getElementById("upload-notes");
  var sheetChoice = document.getElementById("upload-sheet-choice");
  var sheetSelect = document.getElementById("upload-sheet");
  var sheetsNote = document.getElementById("upload-sheets-note");
  var submitButton = document.getElementById("upload-submit");
  var state = null;  // {file, sheet, chosen: {role: column}, columns: [..]}

  function show(node, on) { node.hidden = !on; }

  function fail(message) {
    errorBox.textContent = message;
    show(errorBox, true);
    submitButton.disabled = true;
  }

  function query() {
    var params = new URLSearchParams();
    if (state.sheet) params.set("sheet", state.sheet);
    ROLES.forEach(function (role) { if (state.chosen[role]) params.set(QUERY[role], state.chosen[role]); });
    var text = params.toString();
    return text ? "?" + text : "";
  }

  function send(url) {
    var body = new FormData();
    body.append("file", state.file, state.file.name);
    return fetch(url + query(), {
      method: "POST", body: body, credentials: "same-origin", headers: { "X-CSRF-Token": card.dataset.csrf },
    }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, status: r.status, data: data }; },
        function () { return { ok: false, status: r.status, data: { detail: { message: "The server answered " + r.status + "; reload the page (your session may have ended)." } } }; });
    });
  }

  function message(data) {
    var detail = data && data.detail;
    if (!detail) return "The upload failed.";
    if (Array.isArray(detail)) return detail.map(function (e) { return e.field + ": " + e.reason; }).join("; ");
    return detail.message || String(detail);
  }

  function fillSheets(sheets, current) {
    sheetSelect.innerHTML = "";
    (sheets || []).forEach(function (name) {
      var option = document.createElement("option");
      option.value = name; option.textContent = name;
      if (name === current) option.selected = true;
      sheetSelect.appendChild(option);
    });
    var several = sheets && sheets.length > 1;
    show(sheetChoice, several);
    sheetsNote.textContent = several ? "This workbook has " + sheets.length + " sheets; the one chosen here is read." : "";
  }

  function fillMapping(columns, found) {
    ROLES.forEach(function (role) {
      var select = document.getElementById("map-" + role);
      select.innerHTML = "";
      var none = document.createElement("option");
      none.value = ""; none.textContent = "(none)";
      select.appendChild(none);
      var value = state.chosen[role] || (found && found[role]) || "";
      columns.forEach(function (name) {
        var option = document.createElement("option");
        option.value = name; option.textContent = name || "(no header)";
        if (name === value) option.selected = true;
        select.appendChild(option);
      });
      select.dataset.value = value;
    });
    // neither text column: both rows are marked, as the one the coder must choose
    var title = document.getElementById("map-job_title"), duties = document.getElementById("map-duties_description");
    var neither = !title.dataset.value && !duties.dataset.value;
    [title, duties].forEach(function (select) { select.closest("tr").classList.toggle("missing", neither); });
  }

  function previewed(result) {
    var data = result.data;
    show(preview, true);
    if (!result.ok) {
      var detail = data.detail || {};
      fail(message(data));
      summary.textContent = state.file.name;
      show(notes, false);
      fillSheets(detail.sheets, detail.sheet);
      // a header problem: the columns found, so that the coder can choose the text columns by hand
      if (detail.found && Array.isArray(detail.found)) {
        state.columns = detail.found;
        fillMapping(state.columns, null);
        show(document.getElementById("upload-mapping"), true);
      } else {
        show(document.getElementById("upload-mapping"), false);
      }
      return;
    }
    show(errorBox, false);
    if (!state.columns || !Object.keys(state.chosen).length) state.columns = data.columns;
    var what = data.format === "xlsx" ? "sheet “" + data.sheet + "” of " + data.filename : data.filename;
    summary.textContent = "";
    var strong = document.createElement("b");
    strong.textContent = data.rows.toLocaleString() + " rows";
    summary.appendChild(strong);
    summary.appendChild(document.createTextNode(" in " + what + ", " + data.columns.length + " columns."));
    notes.innerHTML = "";
    (data.notes || []).forEach(function (text) {
      var li = document.createElement("li"); li.textContent = text; notes.appendChild(li);
    });
    show(notes, (data.notes || []).length > 0);
    fillSheets(data.sheets, data.sheet);
    fillMapping(state.columns, data.found);
    show(document.getElementById("upload-mapping"), true);
    submitButton.textContent = "Code " + data.rows.toLocaleString() + " rows";
    submitButton.disabled = false;
  }

  function runPreview() {
    submitButton.disabled = true;
    summary.textContent = "Reading " + state.file.name + " …";
    show(preview, true);
    send(card.dataset.preview).then(previewed, function () { fail("The server could not be reached; try again."); });
  }

  function choose(file) {
    if (!file) return;
    show(errorBox, false);
    state = { file: file, sheet: null, chosen: {}, columns: null };
    busy = true;
    if (file.size === 0) { show(preview, false); fail("The file " + file.name + " is empty."); return; }
    if (file.size > Number(card.dataset.maxBytes)) {
      show(preview, false);
      fail("The file " + file.name + " is " + file.size.toLocaleString() + " bytes, more than the limit of " +
        Number(card.dataset.maxBytes).toLocaleString() + " bytes; split it into smaller files.");
      return;
    }
    runPreview();
  }

  input.addEventListener("change", function () { choose(input.files[0]); });
  ["dragenter", "dragover"].forEach(function (type) {
    drop.addEventListener(type, function (event) { event.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    drop.addEventListener(type, function (event) { event.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (event) {
    var files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) choose(files[0]);
  });

  sheetSelect.addEventListener("change", function () {
    state.sheet = sheetSelect.value; state.chosen = {}; state.columns = null;
    runPreview();
  });
  ROLES.forEach(function (role) {
    document.getElementById("map-" + role).addEventListener("change", function (event) {
      if (event.target.value) state.chosen[role] = event.target.value;
      else delete state.chosen[role];
      runPreview();
    });
  });

  document.getElementById("upload-cancel").addEventListener("click", function () {
    state = null; busy = false; input.value = "";
    show(preview, false); show(errorBox, false);
  });

  submitButton.addEventListener("click", function () {
    if (!state || submitButton.disabled) return;
    submitButton.disabled = true;
    submitButton.textContent = "Submitting …";
    send(card.dataset.submit).then(function (result) {
      if (!result.ok) { fail(message(result.data)); return; }
      busy = false;
      var done = "Job " + result.data.name + " queued: " + result.data.rows.toLocaleString() + " rows.";
      window.location.href = window.location.pathname + "?message=" + encodeURIComponent(done);
    }, function () { fail("The server could not be reached; the file was not submitted."); });
  });
})();
