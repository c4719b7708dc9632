// The review page's keyboard and code search. Decisions are ordinary form posts (the page works without JS:
// each button posts its own choice).
(function () {
  "use strict";
  var form = document.getElementById("decide");
  var search = document.getElementById("search");
  var results = document.getElementById("search-results");
  var selected = -1;
  var sent = false;

  var refresh = document.querySelector("[data-refresh]");
  if (refresh) {
    setTimeout(function () { window.location.reload(); }, 1000 * Number(refresh.dataset.refresh));
  }
  if (!form) return;

  function submit(action, code) {
    if (sent) return;  // one decision per page: a repeated key must not post twice
    sent = true;
    document.getElementById("action").value = action;
    document.getElementById("code").value = code || "";
    form.submit();
  }

  form.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    submit(button.dataset.action, button.dataset.code);
  });

  function text(tag, className, value) {
    var node = document.createElement(tag);
    node.className = className;
    node.textContent = value;
    return node;
  }

  // a hit: the unit group (code, official title) and the title that matched, where it comes from
  function render(items) {
    results.innerHTML = "";
    selected = items.length ? 0 : -1;
    items.forEach(function (item, i) {
      var li = document.createElement("li");
      li.setAttribute("role", "option");
      li.dataset.code = item.code;
      li.appendChild(text("span", "code mono", item.code));
      li.appendChild(text("span", "unit", " " + item.title));
      if (item.matched && item.matched !== item.title) {
        var how = "“" + item.matched + "”" + (item.industry ? " in " + item.industry : "");
        var more = item.matches > 1 ? " +" + (item.matches - 1) + " more" : "";
        li.appendChild(document.createTextNode(" "));
        li.appendChild(text("span", "matched", how));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(text("span", "source muted", item.source + more));
      }
      if (i === 0) li.classList.add("selected");
      li.addEventListener("click", function () { submit("search", item.code); });
      results.appendChild(li);
    });
  }

  function move(delta) {
    var items = results.querySelectorAll("li");
    if (!items.length) return;
    items[selected].classList.remove("selected");
    selected = (selected + delta + items.length) % items.length;
    items[selected].classList.add("selected");
    items[selected].scrollIntoView({ block: "nearest" });
  }

  var pending = 0;
  search.addEventListener("input", function () {
    var ticket = ++pending;
    var q = search.value.trim();
    if (!q) { render([]); return; }
    fetch(search.dataset.url + "?q=" + encodeURIComponent(q), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (items) { if (ticket === pending) render(items); });
  });

  search.addEventListener("keydown", function (event) {
    if (event.key === "ArrowDown") { event.preventDefault(); move(1); }
    else if (event.key === "ArrowUp") { event.preventDefault(); move(-1); }
    else if (event.key === "Escape") { search.blur(); }
    else if (event.key === "Enter") {
      event.preventDefault();
      var item = results.querySelectorAll("li")[selected];
      if (item) submit("search", item.dataset.code);
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.target === search || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest("#audit-form")) return;
    var key = event.key;
    var accept = document.getElementById("accept");  // only where the model's own code is the default
    if (key >= "1" && key <= "5") {
      var alt = document.querySelector('button.alt[data-key="' + key + '"]');
      if (alt) { event.preventDefault(); submit(alt.dataset.action, alt.dataset.code); }
    } else if (key === "Enter" || key === "a") {
      event.preventDefault();
      if (accept) submit("accept", accept.dataset.code);
      else if (key === "Enter") search.focus();  // no default answer: the coder chooses one
    } else if (key === "u") {
      event.preventDefault();
      submit("uncodable", "");
    } else if (key === "/") {
      event.preventDefault();
      search.focus();
    } else if (key === "j" || key === "k") {
      var link = document.getElementById(key === "j" ? "next" : "prev");
      if (link) window.location.href = link.href;
    }
  });
})();
