// "Code one answer" (templates/code.html, services/gateway/review/coder.py): ask the model as the coder types,
// show the ranked codes, the routing decision and the evidence; keyboard alone.
//
// Each keystroke starts a short debounce, then one POST; a newer keystroke aborts the request in flight
// (AbortController), and an answer is shown only if it is for the latest text, so a slow answer never
// overwrites a newer one. The time from a keystroke to its answer on screen (performance.now()) is kept in
// window.coderLatencies and on #coder-results[data-latency-ms] (tests/test_review_coder_browser.py reads them).
(function () {
  "use strict";
  var form = document.getElementById("coder");
  if (!form) return;
  var title = document.getElementById("coder-title");
  var duties = document.getElementById("coder-duties");
  var industry = document.getElementById("coder-industry");
  var fields = [title, duties, industry];
  var output = document.getElementById("coder-output");
  var results = document.getElementById("coder-results");
  var decision = document.getElementById("coder-decision");
  var evidence = document.getElementById("coder-evidence");
  var picked = document.getElementById("coder-picked");
  var model = document.getElementById("coder-model");
  var error = document.getElementById("coder-error");
  var debounceMs = Number(form.dataset.debounceMs || 20);
  var REASONS = {
    not_coded: "no level cleared its threshold",
    below_threshold: "answered at a coarser level than the unit group",
    not_an_occupation: "the answer names a status, not a job",
    unsupported_language: "written in a language the model does not cover",
    language_mismatch: "the text is not in the language the record says",
    not_english: "the text does not read as English (the model reads English)",  // models before languages
  };

  var latest = 0;        // the number of the latest keystroke
  var typedAt = 0;       // performance.now() of that keystroke
  var timer = null;
  var inFlight = null;   // the AbortController of the request in flight
  var selected = -1;
  var pickWhenShown = false;  // Enter pressed before the answer to the latest text arrived
  window.coderLatencies = [];

  function node(tag, className, text) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function percent(x) { return x === null || x === undefined ? "" : Math.round(100 * x) + "%"; }

  function record() {
    return { job_title: title.value, duties_description: duties.value, industry: industry.value };
  }

  function blank() { return !title.value.trim() && !duties.value.trim(); }

  function clearResults() {
    output.hidden = true;
    error.hidden = true;
    results.innerHTML = "";
    evidence.innerHTML = "";
    selected = -1;
    title.setAttribute("aria-expanded", "false");
    title.removeAttribute("aria-activedescendant");
  }

  function select(index) {
    var items = results.querySelectorAll("li");
    if (!items.length) return;
    if (selected >= 0 && items[selected]) {
      items[selected].classList.remove("selected");
      items[selected].setAttribute("aria-selected", "false");
    }
    selected = (index + items.length) % items.length;
    items[selected].classList.add("selected");
    items[selected].setAttribute("aria-selected", "true");
    title.setAttribute("aria-activedescendant", items[selected].id);
  }

  function pick(index) {
    var item = results.querySelectorAll("li")[index];
    if (!item) return;
    select(index);
    var code = item.dataset.code;
    picked.dataset.code = code;
    picked.textContent = "Picked " + code + " " + item.dataset.title + ".";
    copy(code).then(function (done) {
      if (picked.dataset.code !== code) return;
      picked.dataset.copied = done ? "true" : "false";
      picked.textContent = "Picked " + code + " " + item.dataset.title +
        (done ? " (copied to the clipboard)." : " (copy it with Ctrl+C: the browser did not allow copying).");
    });
  }

  // the clipboard API where the page may use it; else the older copy command on a hidden field
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { return true; }, fallback);
    }
    return Promise.resolve(fallback());
    function fallback() {
      var area = node("textarea", "offscreen");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      var done = false;
      try { done = document.execCommand("copy"); } catch (e) { done = false; }
      area.remove();
      (document.activeElement === area ? title : document.activeElement).focus();
      return done;
    }
  }

  function render(answer) {
    var items = answer.alternatives;
    results.innerHTML = "";
    items.forEach(function (a, i) {
      var li = node("li");
      li.id = "coder-opt-" + (i + 1);
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", "false");
      li.dataset.code = a.code;
      li.dataset.title = a.title;
      if (answer.isco_code === a.code) li.classList.add("answer");
      li.appendChild(node("span", "code mono", a.code));
      li.appendChild(node("span", "title", a.title));
      var conf = node("span", "conf");
      var bar = node("span", "confbar");
      var fill = node("span");
      fill.style.width = Math.round(100 * a.confidence) + "%";
      bar.appendChild(fill);
      conf.appendChild(bar);
      conf.appendChild(document.createTextNode(percent(a.confidence)));
      li.appendChild(conf);
      li.addEventListener("mousedown", function (event) { event.preventDefault(); });  // keep the focus
      li.addEventListener("click", function () { pick(i); });
      results.appendChild(li);
    });
    selected = -1;
    if (items.length) select(0);
    title.setAttribute("aria-expanded", items.length ? "true" : "false");

    decision.innerHTML = "";
    decision.className = "coder-decision " + (answer.needs_review ? "review" : "auto");
    decision.dataset.route = answer.needs_review ? "review" : "auto";
    var head = node("b", "", answer.needs_review ? "Needs review" : "Auto-coded");
    decision.appendChild(head);
    if (answer.coded) {
      var level = answer.level === 4 ? "unit group" : "level " + answer.level;
      decision.appendChild(document.createTextNode(": " + answer.isco_code + " " + answer.title + " (" + level +
        ", confidence " + percent(answer.confidence) + ")"));
    } else {
      decision.appendChild(document.createTextNode(": the model gives no code at any level"));
    }
    if (answer.needs_review && answer.review_reasons.length) {
      var why = answer.review_reasons.map(function (r) { return REASONS[r] || r.replace(/_/g, " "); });
      decision.appendChild(document.createTextNode(". Why: " + why.join("; ")));
    }
    if (answer.routing_confidence !== null && answer.routing_confidence !== undefined) {
      decision.appendChild(node("span", "muted", " · routing confidence " + percent(answer.routing_confidence)));
    }
    if (answer.language) decision.appendChild(node("span", "muted", " · read as language " + answer.language));
    if (answer.truncated) decision.appendChild(node("span", "muted", " · the text was cut to the model's limit"));

    evidence.innerHTML = "";
    if (!answer.evidence.length) evidence.appendChild(node("li", "muted", "No stored training titles for this model."));
    answer.evidence.forEach(function (e) {
      var li = node("li");
      li.dataset.code = e.unit_code;
      li.appendChild(node("span", "example", "“" + e.text + "”"));
      li.appendChild(node("span", "code mono", e.unit_code));
      li.appendChild(node("span", "unit", e.unit_title));
      li.appendChild(node("span", "muted", "similarity " + e.similarity.toFixed(2)));
      evidence.appendChild(li);
    });
    model.textContent = "Model " + answer.model_version + ".";
    error.hidden = true;
    output.hidden = false;
  }

  function fail(message) {
    output.hidden = true;
    error.textContent = message;
    error.hidden = false;
  }

  function ask(seq, startedAt) {
    if (inFlight) inFlight.abort();
    var controller = new AbortController();
    inFlight = controller;
    fetch(form.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
      body: JSON.stringify(record()),
      signal: controller.signal,
    }).then(function (r) {
      if (r.redirected) throw new Error("Your session has ended: reload the page to sign in again.");
      return r.json().then(function (body) {
        if (!r.ok) {
          var detail = body.detail;
          var text = Array.isArray(detail) ? detail.map(function (d) { return d.field + ": " + d.reason; }).join("; ")
            : (detail && detail.message) || String(detail);
          throw new Error(r.status >= 500 ? "The model is not available right now (" + text + ")." : text);
        }
        return body;
      });
    }).then(function (answer) {
      if (seq !== latest) return;  // a newer keystroke has its own request
      render(answer);
      if (pickWhenShown) { pickWhenShown = false; pick(0); }
      var ms = performance.now() - startedAt;
      window.coderLatencies.push(ms);
      results.dataset.latencyMs = ms.toFixed(1);
      results.dataset.seq = String(seq);
      results.dataset.query = title.value;
    }).catch(function (err) {
      if (err.name === "AbortError" || seq !== latest) return;
      fail(err.message);
    }).then(function () {
      if (inFlight === controller) inFlight = null;
    });
  }

  function typed() {
    latest += 1;
    pickWhenShown = false;
    typedAt = performance.now();
    var seq = latest, startedAt = typedAt;
    clearTimeout(timer);
    if (blank()) {
      if (inFlight) { inFlight.abort(); inFlight = null; }
      clearResults();
      results.dataset.seq = String(seq);
      return;
    }
    timer = setTimeout(function () { ask(seq, startedAt); }, debounceMs);
  }

  function clearAll() {
    clearTimeout(timer);
    if (inFlight) { inFlight.abort(); inFlight = null; }
    latest += 1;
    fields.forEach(function (f) { f.value = ""; });
    clearResults();
    picked.textContent = "";
    delete picked.dataset.code;
    delete picked.dataset.copied;
    title.focus();
  }

  fields.forEach(function (field) {
    field.addEventListener("input", typed);
    field.addEventListener("keydown", function (event) {
      if (event.key === "ArrowDown") { event.preventDefault(); select(selected + 1); }
      else if (event.key === "ArrowUp") { event.preventDefault(); select(selected - 1); }
      else if (event.key === "Enter") {
        event.preventDefault();
        if (results.dataset.seq !== String(latest) && !blank()) pickWhenShown = true;  // on its way
        else if (selected >= 0) pick(selected);
      }
      else if (event.key === "Escape") { event.preventDefault(); clearAll(); }
    });
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  title.focus();
})();
