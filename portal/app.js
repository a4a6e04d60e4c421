// deidflow researcher portal: vanilla ES module, no build step, no dependency.
// Runs under a strict CSP (script-src 'self', style-src 'self', connect-src: the portal, the API and
// the Cognito domain): no inline script or style, no eval; every element is built with the DOM API.

const TAGS = {
  study: "0020000D",
  series: "0020000E",
  date: "00080020",
  description: "00081030",
  modalities: "00080061",
  seriesCount: "00201206",
  instanceCount: "00201208",
  modality: "00080060",
  seriesDescription: "0008103E",
  seriesNumber: "00200011",
  seriesInstances: "00201209",
};
const POLL_MS = 2000;
const TOKEN_KEY = "deidflow.portal.token";
const PKCE_KEY = "deidflow.portal.pkce";

const state = {
  config: null,
  token: null,
  me: null,
  jobs: [],
  pollTimer: null,
  lastSearch: { query: "", qido: {} },
  selected: new Set(),
  thumbnails: [], // object URLs to revoke when results are replaced
};

// -- small DOM helpers ------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(node, visible = true) {
  node.hidden = !visible;
}

function say(id, text) {
  $(id).textContent = text || "";
}

function fail(id, text) {
  const node = $(id);
  node.textContent = text || "";
  show(node, Boolean(text));
}

const PLURALS = { series: "series", study: "studies" };

function plural(n, word) {
  return `${n} ${n === 1 ? word : PLURALS[word] || `${word}s`}`;
}

// -- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(url, { method = "GET", body, accept = "application/json", raw = false } = {}) {
  const headers = { Accept: accept };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let answer;
  try {
    answer = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, "the research API cannot be reached: check your connection and try again");
  }
  if (answer.status === 401) {
    signedOut("Your session has ended: sign in again.");
    throw new ApiError(401, "your session has ended: sign in again");
  }
  if (!answer.ok) {
    let message = `the research API answered ${answer.status}`;
    try {
      const data = await answer.json();
      if (data && (data.error || data.message)) message = data.error || data.message;
    } catch (exc) {
      /* not JSON: keep the status */
    }
    throw new ApiError(answer.status, message);
  }
  if (raw) return answer;
  if (answer.status === 204) return null;
  return answer.json();
}

const api = (path) => state.config.api.replace(/\/$/, "") + path;
const dicomweb = (path) => state.config.dicomweb.replace(/\/$/, "") + path;

// -- sign in ----------------------------------------------------------------------------------

function base64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function cognitoSignIn() {
  const auth = state.config.auth;
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(48)));
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const nonce = base64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state: nonce }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: auth.client_id,
    redirect_uri: auth.redirect_uri,
    scope: (auth.scopes || ["openid"]).join(" "),
    state: nonce,
    code_challenge_method: "S256",
    code_challenge: challenge,
  });
  window.location.assign(`${auth.domain.replace(/\/$/, "")}/oauth2/authorize?${params}`);
}

async function cognitoReturn() {
  const params = new URLSearchParams(window.location.search);
  if (params.has("error")) {
    throw new Error(`sign-in was refused (${params.get("error_description") || params.get("error")}): try again`);
  }
  const code = params.get("code");
  if (!code) return false;
  const saved = JSON.parse(sessionStorage.getItem(PKCE_KEY) || "null");
  sessionStorage.removeItem(PKCE_KEY);
  history.replaceState(null, "", window.location.pathname); // the code is single use: off the address bar
  if (!saved || saved.state !== params.get("state")) {
    throw new Error("this sign-in did not start here (its state does not match): sign in again");
  }
  const auth = state.config.auth;
  const answer = await fetch(`${auth.domain.replace(/\/$/, "")}/oauth2/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      client_id: auth.client_id,
      code,
      redirect_uri: auth.redirect_uri,
      code_verifier: saved.verifier,
    }),
  });
  if (!answer.ok) throw new Error(`the sign-in could not be completed (${answer.status}): sign in again`);
  const tokens = await answer.json();
  setToken(tokens.access_token);
  return true;
}

async function localSignIn(event) {
  event.preventDefault();
  fail("login-error", "");
  const username = $("login-user").value;
  try {
    const answer = await call(api("/local/token"), { method: "POST", body: { username } });
    setToken(answer.access_token);
    await start();
  } catch (exc) {
    fail("login-error", `Could not sign in as ${username}: ${exc.message}.`);
  }
}

function setToken(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

function signOut() {
  const auth = state.config.auth;
  signedOut("");
  if (auth.mode === "cognito") {
    const params = new URLSearchParams({ client_id: auth.client_id, logout_uri: auth.redirect_uri });
    window.location.assign(`${auth.domain.replace(/\/$/, "")}/logout?${params}`);
  }
}

function signedOut(message) {
  state.token = null;
  state.me = null;
  state.jobs = [];
  state.selected.clear();
  clearTimeout(state.pollTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  show($("app"), false);
  show($("whoami"), false);
  $("results").replaceChildren();
  show($("results-box"), false);
  $("jobs").replaceChildren();
  show($("login"), true);
  fail("login-error", message);
}

function showLogin() {
  const auth = state.config.auth || {};
  show($("login"), true);
  if (auth.mode === "local") {
    const select = $("login-user");
    select.replaceChildren(...(auth.users || []).map((u) => el("option", { value: u, text: u })));
    show($("login-local"), true);
    if (!(auth.users || []).length) fail("login-error", "The local API names no user: add users to its access file.");
  } else if (auth.mode === "cognito") {
    show($("login-cognito"), true);
  } else {
    fail("login-error", "The portal's config.json names no sign-in method (auth.mode): ask the administrator.");
  }
}

// -- after sign in ----------------------------------------------------------------------------

async function start() {
  try {
    state.me = await call(api("/research/me"));
  } catch (exc) {
    if (exc.status !== 401) fail("login-error", `Signed in, but your permissions could not be read: ${exc.message}.`);
    return;
  }
  show($("login"), false);
  show($("app"), true);
  show($("whoami"), true);
  say("whoami-name", state.me.username || state.me.sub);
  renderMe();
  selectTab("tab-search");
  await refreshJobs();
}

function renderMe() {
  const me = state.me;
  const profiles = me.profiles || [];
  const active = profiles.filter((p) => p.active !== false);
  say(
    "me-summary",
    `${me.username || me.sub}: ${plural(active.length, "active profile")}` +
      (me.groups && me.groups.length ? `; groups ${me.groups.join(", ")}` : "") +
      (me.profiles_version ? `; profiles version ${me.profiles_version}` : "") +
      (me.auditor ? "; auditor" : ""),
  );
  show($("me-empty"), active.length === 0);
  const today = new Date().toISOString().slice(0, 10);
  $("profiles").tBodies[0].replaceChildren(
    ...profiles.map((p) => {
      const expired = p.active === false || (p.expires && String(p.expires) < today);
      return el(
        "tr",
        { class: expired ? "expired" : null, "data-profile": p.name },
        el("th", { scope: "row", text: p.name }),
        el("td", { text: p.description || "" }),
        el("td", { text: p.approval || "—" }),
        el("td", {}, p.expires || "never", expired ? el("span", { class: "badge bad", text: " expired" }) : null),
        el("td", { text: p.level || "" }),
        el("td", { text: (p.actions || []).join(", ") }),
      );
    }),
  );
  const destinations = me.destinations || [];
  show($("destinations-empty"), destinations.length === 0);
  $("destinations").replaceChildren(
    ...destinations.map((d) =>
      el(
        "li",
        { "data-destination": d.name },
        el("strong", { text: d.name }),
        d.managed ? " — managed bucket: files are downloaded from this portal" : " — your team's bucket",
        d.max_instances ? ` (at most ${d.max_instances} instances per export)` : "",
      ),
    ),
  );
  $("export-destination").replaceChildren(
    ...destinations.map((d) => el("option", { value: d.name, text: d.name + (d.managed ? " (download here)" : "") })),
  );
  show($("tab-audit-item"), Boolean(me.auditor));
  const todayInput = new Date().toISOString().slice(0, 10);
  if (!$("a-since").value) $("a-since").value = todayInput;
  if (!$("a-until").value) $("a-until").value = todayInput;
}

// -- tabs -------------------------------------------------------------------------------------

function tabs() {
  return [...document.querySelectorAll('[role="tab"]')].filter((t) => !t.closest("[hidden]"));
}

function selectTab(id) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.id === id;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    show($(tab.getAttribute("aria-controls")), selected);
  }
  if (id === "tab-jobs") refreshJobs();
}

function tabKeys(event) {
  const list = tabs();
  const at = list.indexOf(event.target);
  if (at < 0) return;
  let next = null;
  if (event.key === "ArrowRight") next = list[(at + 1) % list.length];
  else if (event.key === "ArrowLeft") next = list[(at - 1 + list.length) % list.length];
  else if (event.key === "Home") next = list[0];
  else if (event.key === "End") next = list[list.length - 1];
  if (next) {
    event.preventDefault();
    selectTab(next.id);
    next.focus();
  }
}

// -- search -----------------------------------------------------------------------------------

function searchMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function qidoKeys() {
  const keys = {};
  for (const name of ["PatientID", "ModalitiesInStudy", "StudyDescription", "AccessionNumber"]) {
    const value = $("search-form").elements[name].value.trim();
    if (value) keys[name] = value;
  }
  const from = $("q-from").value.replace(/-/g, "");
  const to = $("q-to").value.replace(/-/g, "");
  if (from || to) keys.StudyDate = from === to ? from : `${from}-${to}`;
  return keys;
}

function value(record, tag) {
  const entry = record[tag];
  return entry && entry.Value && entry.Value.length ? entry.Value : [];
}

function first(record, tag, fallback = "") {
  const values = value(record, tag);
  return values.length ? values[0] : fallback;
}

function formatDate(date) {
  const d = String(date || "");
  return /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || "no date";
}

async function search(event) {
  event.preventDefault();
  fail("search-error", "");
  fail("q-text-error", "");
  $("q-text").removeAttribute("aria-invalid");
  const button = $("search-button");
  button.disabled = true;
  say("search-status", "Searching…");
  try {
    let studies;
    let note = "";
    if (searchMode() === "query") {
      const query = $("q-text").value.trim();
      if (!query) {
        fail("q-text-error", "Write a query first, e.g. Modality StrEquals CT.");
        $("q-text").setAttribute("aria-invalid", "true");
        $("q-text").focus();
        say("search-status", "");
        return;
      }
      let answer;
      try {
        answer = await call(api("/research/search"), { method: "POST", body: { query, qido: {}, limit: 25 } });
      } catch (exc) {
        if (exc.status === 400) {
          fail("q-text-error", exc.message);
          $("q-text").setAttribute("aria-invalid", "true");
          $("q-text").focus();
          say("search-status", "The query was not run: correct it and search again.");
          return;
        }
        throw exc;
      }
      state.lastSearch = { query, qido: {} };
      studies = (answer.studies || []).map((s) => ({
        study: s.study,
        date: s.date,
        description: s.description,
        modalities: s.modalities || [],
        instances: s.instances,
        series: (s.series || []).map((x) => ({ ...x })),
      }));
      if (answer.complete === false) {
        note = ` (${answer.examined} instances examined; the search stopped early: narrow it to see everything)`;
      }
    } else {
      const keys = qidoKeys();
      const params = new URLSearchParams({ ...keys, includefield: "StudyDescription", limit: "50" });
      const answer = await call(dicomweb(`/studies?${params}`), { accept: "application/dicom+json" });
      state.lastSearch = { query: "", qido: keys };
      studies = (answer || []).map((r) => ({
        study: first(r, TAGS.study),
        date: first(r, TAGS.date),
        description: first(r, TAGS.description),
        modalities: value(r, TAGS.modalities),
        instances: first(r, TAGS.instanceCount, null),
        seriesCount: first(r, TAGS.seriesCount, null),
        series: null, // read when the study is opened
      }));
    }
    renderResults(studies);
    say(
      "search-status",
      studies.length
        ? `${plural(studies.length, "study")} found${note}.`
        : "No study matches: widen the search (fewer fields, wildcards, a longer date range).",
    );
  } catch (exc) {
    say("search-status", "");
    fail("search-error", `The search failed: ${exc.message}.`);
  } finally {
    button.disabled = false;
  }
}

function renderResults(studies) {
  for (const url of state.thumbnails) URL.revokeObjectURL(url);
  state.thumbnails = [];
  state.selected.clear();
  updateSelected();
  const list = $("results");
  list.replaceChildren(...studies.map(studyItem));
  show($("results-box"), studies.length > 0);
}

function studyItem(study) {
  const seriesId = `series-${study.study.replace(/[^0-9A-Za-z]/g, "_")}`;
  const checkbox = el("input", {
    type: "checkbox",
    class: "select-study",
    "aria-label": `Select study ${study.study} for export`,
    value: study.study,
    onchange: (e) => {
      if (e.target.checked) state.selected.add(study.study);
      else state.selected.delete(study.study);
      updateSelected();
    },
  });
  const seriesBox = el("ul", { id: seriesId, class: "series", hidden: true });
  const toggle = el("button", {
    type: "button",
    class: "toggle",
    "aria-expanded": "false",
    "aria-controls": seriesId,
    text: "Show series",
    onclick: () => toggleSeries(study, toggle, seriesBox),
  });
  const counts = [];
  const seriesCount = study.series ? study.series.length : study.seriesCount;
  if (seriesCount !== null && seriesCount !== undefined) counts.push(plural(Number(seriesCount), "series"));
  if (study.instances !== null && study.instances !== undefined) counts.push(plural(Number(study.instances), "instance"));
  const viewer = state.config.viewer
    ? el("a", {
        class: "viewer-link",
        href: state.config.viewer.replace("{study}", encodeURIComponent(study.study)),
        target: "_blank",
        rel: "noopener noreferrer",
        text: "Open in viewer",
        "aria-label": `Open study ${study.study} in the viewer (new tab)`,
      })
    : null;
  return el(
    "li",
    { class: "study", "data-study": study.study },
    el(
      "div",
      { class: "study-head" },
      checkbox,
      el(
        "div",
        { class: "study-text" },
        el("strong", { text: study.description || "(no description)" }),
        el(
          "span",
          { class: "meta" },
          `${formatDate(study.date)} · ${(study.modalities || []).join(", ") || "?"} · ${counts.join(", ")}`,
        ),
        el("code", { class: "uid", text: study.study }),
      ),
      el("div", { class: "study-actions" }, toggle, viewer),
    ),
    seriesBox,
  );
}

function updateSelected() {
  say("selected-count", String(state.selected.size));
}

async function toggleSeries(study, toggle, box) {
  const open = toggle.getAttribute("aria-expanded") === "true";
  if (open) {
    toggle.setAttribute("aria-expanded", "false");
    toggle.textContent = "Show series";
    show(box, false);
    return;
  }
  toggle.setAttribute("aria-expanded", "true");
  toggle.textContent = "Hide series";
  show(box, true);
  if (box.dataset.loaded) return;
  box.replaceChildren(el("li", { class: "status", role: "status", text: "Loading the series…" }));
  try {
    if (!study.series) {
      const answer = await call(dicomweb(`/studies/${encodeURIComponent(study.study)}/series`), {
        accept: "application/dicom+json",
      });
      study.series = (answer || []).map((r) => ({
        series: first(r, TAGS.series),
        modality: first(r, TAGS.modality),
        description: first(r, TAGS.seriesDescription),
        number: first(r, TAGS.seriesNumber, null),
        instances: first(r, TAGS.seriesInstances, null),
      }));
    }
    box.dataset.loaded = "1";
    if (!study.series.length) {
      box.replaceChildren(el("li", { class: "empty", text: "No series of this study is visible to you." }));
      return;
    }
    box.replaceChildren(...study.series.map((s) => seriesItem(study, s)));
  } catch (exc) {
    box.replaceChildren(el("li", { class: "error", role: "alert", text: `The series could not be read: ${exc.message}.` }));
  }
}

function seriesItem(study, series) {
  const img = el("img", { class: "thumb", alt: `Thumbnail of series ${series.description || series.series}`, width: 96, height: 96 });
  const figure = el("div", { class: "thumb-box" }, img);
  loadThumbnail(study.study, series.series, img, figure);
  return el(
    "li",
    { class: "series-item", "data-series": series.series },
    figure,
    el(
      "div",
      {},
      el("strong", { text: series.description || "(no description)" }),
      el(
        "span",
        { class: "meta" },
        `${series.modality || "?"}` +
          (series.number !== null && series.number !== undefined ? ` · series ${series.number}` : "") +
          (series.instances !== null && series.instances !== undefined ? ` · ${plural(Number(series.instances), "instance")}` : ""),
      ),
      el("code", { class: "uid", text: series.series }),
    ),
  );
}

async function loadThumbnail(study, series, img, box) {
  try {
    const answer = await call(
      dicomweb(`/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/thumbnail`),
      { accept: "image/jpeg", raw: true },
    );
    const url = URL.createObjectURL(await answer.blob());
    state.thumbnails.push(url);
    img.src = url;
    img.dataset.loaded = "1";
  } catch (exc) {
    box.replaceChildren(el("span", { class: "thumb-missing", text: "no preview" }));
  }
}

// -- cohorts and exports ----------------------------------------------------------------------

function currentSearch() {
  // What the form says now (not only what was last searched): the query text in query mode, the
  // QIDO keys in field mode.
  if (searchMode() === "query") return { query: $("q-text").value.trim(), qido: {} };
  return { query: "", qido: qidoKeys() };
}

async function buildCohort(event) {
  event.preventDefault();
  fail("cohort-error", "");
  const name = $("cohort-name").value.trim();
  if (!name) {
    fail("cohort-error", "Give the cohort a name.");
    $("cohort-name").focus();
    return;
  }
  const { query, qido } = currentSearch();
  try {
    const answer = await call(api("/research/cohorts"), {
      method: "POST",
      body: { name, query, qido, attributes: ["Modality", "SeriesDescription"] },
    });
    say("cohort-status", `Cohort "${name}" started (job ${answer.job.id}): follow it in Cohorts & exports.`);
    upsertJob(answer.job);
  } catch (exc) {
    say("cohort-status", "");
    fail("cohort-error", `The cohort was not started: ${exc.message}.`);
  }
}

async function startExport(event) {
  event.preventDefault();
  fail("export-error", "");
  const form = $("export-form");
  const name = $("export-name").value.trim();
  const formats = [...form.querySelectorAll('input[name="formats"]:checked')].map((c) => c.value);
  const destination = $("export-destination").value;
  const source = form.querySelector('input[name="source"]:checked').value;
  const body = { name, formats, destination };
  if (!name) return fail("export-error", "Give the export a name.");
  if (!formats.length) return fail("export-error", "Tick at least one format.");
  if (!destination) return fail("export-error", "You have no export destination: no profile of yours allows export.");
  if (source === "cohort") {
    if (!$("export-cohort").value) return fail("export-error", "No finished cohort yet: build one first, or export the ticked studies.");
    body.cohort = $("export-cohort").value;
  } else {
    if (!state.selected.size) return fail("export-error", "Tick at least one study in the results first.");
    body.uids = [...state.selected].map((study) => ({ study }));
  }
  try {
    const answer = await call(api("/research/exports"), { method: "POST", body });
    say("export-status", `Export "${name}" started (job ${answer.job.id}): follow it in Cohorts & exports.`);
    upsertJob(answer.job);
  } catch (exc) {
    say("export-status", "");
    fail("export-error", `The export was not started: ${exc.message}.`);
  }
}

// -- jobs -------------------------------------------------------------------------------------

const RUNNING = new Set(["QUEUED", "RUNNING"]);

function upsertJob(job) {
  const at = state.jobs.findIndex((j) => j.id === job.id);
  if (at >= 0) state.jobs[at] = job;
  else state.jobs.unshift(job);
  renderJobs();
  schedulePoll();
}

async function refreshJobs() {
  if (!state.token) return;
  try {
    const answer = await call(api("/research/jobs"));
    state.jobs = (answer.jobs || []).slice().sort((a, b) => String(b.created).localeCompare(String(a.created)));
    fail("jobs-error", "");
    renderJobs();
  } catch (exc) {
    if (exc.status !== 401) fail("jobs-error", `The jobs could not be read: ${exc.message}. The portal tries again.`);
  }
  schedulePoll();
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  if (state.token && state.jobs.some((j) => RUNNING.has(j.status))) {
    state.pollTimer = setTimeout(refreshJobs, POLL_MS);
  }
}

function renderJobs() {
  const jobs = state.jobs;
  show($("jobs-empty"), jobs.length === 0);
  const running = jobs.filter((j) => RUNNING.has(j.status)).length;
  say("jobs-status", jobs.length ? `${plural(jobs.length, "job")}, ${running} running.` : "");
  $("jobs").replaceChildren(...jobs.map(jobItem));
  const cohorts = jobs.filter((j) => j.kind === "cohort" && j.status === "SUCCEEDED");
  const select = $("export-cohort");
  const chosen = select.value;
  select.replaceChildren(
    ...(cohorts.length
      ? cohorts.map((j) => el("option", { value: j.id, text: `${j.name || j.id} (${countsText(j.counts)})` }))
      : [el("option", { value: "", text: "No finished cohort yet: build one above" })]),
  );
  if (cohorts.some((j) => j.id === chosen)) select.value = chosen;
}

function countsText(counts) {
  if (!counts) return "";
  return Object.entries(counts)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ");
}

function jobItem(job) {
  const progress = job.progress || {};
  const total = Number(progress.total || 0);
  const done = Number(progress.done || 0);
  const label = `${job.kind === "cohort" ? "Cohort" : "Export"} ${job.name || job.id}`;
  const children = [
    el(
      "div",
      { class: "job-head" },
      el("strong", { text: label }),
      el("span", { class: `badge status-${job.status.toLowerCase()}`, text: job.status }),
    ),
    el(
      "span",
      { class: "meta" },
      `started ${job.created || "?"}` + (job.updated ? ` · updated ${job.updated}` : "") +
        (job.request && job.request.destination ? ` · to ${job.request.destination}` : "") +
        (job.profiles && job.profiles.length ? ` · under ${job.profiles.join(", ")}` : ""),
    ),
  ];
  if (RUNNING.has(job.status)) {
    const bar = el("progress", { max: total || 1, "aria-label": `${label} progress` });
    if (total) bar.value = done;
    else bar.removeAttribute("value"); // indeterminate until the job knows its parts
    children.push(el("div", { class: "progress" }, bar, el("span", { text: total ? ` ${done} of ${total} parts` : " waiting to start" })));
  }
  if (job.counts && Object.keys(job.counts).length) children.push(el("span", { class: "meta counts", text: countsText(job.counts) }));
  const actions = el("div", { class: "actions" });
  if (job.status === "FAILED") {
    children.push(el("p", { class: "error", role: "alert", text: `Failed: ${job.error || "no reason given"}. Resume it to retry what is left.` }));
    actions.append(el("button", { type: "button", class: "resume", text: "Resume", "aria-label": `Resume ${label}`, onclick: () => resumeJob(job) }));
  }
  if (job.status === "SUCCEEDED") {
    actions.append(
      el("button", { type: "button", class: "show-manifest", text: "Show manifest", "aria-label": `Show the manifest of ${label}`, onclick: () => showManifest(job) }),
    );
  }
  children.push(actions);
  return el("li", { class: "job", "data-job": job.id, "data-kind": job.kind, "data-status": job.status }, ...children);
}

async function resumeJob(job) {
  fail("jobs-error", "");
  try {
    const answer = await call(api(`/research/jobs/${encodeURIComponent(job.id)}/resume`), { method: "POST" });
    upsertJob(answer.job || { ...job, status: "QUEUED" });
    say("jobs-status", `${job.name || job.id} resumed.`);
  } catch (exc) {
    fail("jobs-error", `The job could not be resumed: ${exc.message}.`);
  }
}

async function showManifest(job) {
  const box = $("manifest");
  fail("manifest-error", "");
  show(box, true);
  box.dataset.job = job.id;
  say("manifest-title", `Manifest of ${job.kind} ${job.name || job.id}`);
  say("manifest-summary", "Loading the manifest…");
  $("manifest-title").focus(); // keyboard and screen reader users land on what they asked for
  $("manifest-downloads").replaceChildren();
  const table = $("manifest-table");
  table.tHead.replaceChildren();
  table.tBodies[0].replaceChildren();
  let answer;
  try {
    answer = await call(api(`/research/jobs/${encodeURIComponent(job.id)}/manifest?offset=0&limit=100`));
  } catch (exc) {
    say("manifest-summary", "");
    fail("manifest-error", `The manifest could not be read: ${exc.message}.`);
    return;
  }
  const managed = job.kind === "export" && (answer.destination || (job.request || {}).destination) === "managed";
  if (job.kind === "cohort") {
    const rows = answer.instances || [];
    say("manifest-summary", `${plural(answer.total ?? rows.length, "instance")}${rows.length < (answer.total || 0) ? `; the first ${rows.length} shown` : ""}.`);
    const names = [...new Set(rows.flatMap((r) => Object.keys(r.attributes || {})))];
    table.tHead.append(el("tr", {}, ...["Study", "Series", "SOP instance", ...names].map((n) => el("th", { scope: "col", text: n }))));
    table.tBodies[0].append(
      ...rows.map((r) =>
        el("tr", {}, el("td", { text: r.study }), el("td", { text: r.series }), el("td", { text: r.sop }),
          ...names.map((n) => el("td", { text: [].concat((r.attributes || {})[n] ?? "").join("\\") }))),
      ),
    );
    return;
  }
  const files = answer.files || [];
  say(
    "manifest-summary",
    `${plural(answer.total ?? files.length, "file")} delivered to ${answer.destination || (job.request || {}).destination}` +
      (files.length < (answer.total || 0) ? `; the first ${files.length} shown` : "") +
      (managed ? "." : ": your team's bucket, read them there."),
  );
  if (managed) {
    $("manifest-downloads").append(
      downloadButton(job, "manifest.csv", "Download manifest.csv"),
      downloadButton(job, "export.json", "Download export.json"),
    );
  }
  table.tHead.append(el("tr", {}, ...["File", "Format", "Bytes", "SHA-256", ""].map((n) => el("th", { scope: "col", text: n }))));
  table.tBodies[0].append(
    ...files.map((f) =>
      el(
        "tr",
        { "data-path": f.path, "data-sha256": f.sha256 },
        el("td", {}, el("code", { class: "path", text: f.path })),
        el("td", { text: f.format }),
        el("td", { text: String(f.bytes) }),
        el("td", {}, el("code", { class: "sha", title: f.sha256, text: `${String(f.sha256 || "").slice(0, 16)}…` })),
        el("td", {}, managed ? downloadButton(job, f.path, "Download", `Download ${f.path}`) : ""),
      ),
    ),
  );
}

function downloadButton(job, path, text, label) {
  const holder = el("span", { class: "download" });
  const button = el("button", {
    type: "button",
    class: "download-button",
    "data-path": path,
    text,
    "aria-label": label || text,
    onclick: async () => {
      button.disabled = true;
      try {
        const params = new URLSearchParams({ path });
        const answer = await call(api(`/research/jobs/${encodeURIComponent(job.id)}/file?${params}`));
        // A just-signed link: a navigation, not a fetch (the bucket is not an origin the page may read).
        const link = el("a", {
          class: "download-link",
          href: answer.url,
          download: path.split("/").pop(),
          target: "_blank",
          rel: "noopener noreferrer",
          "data-path": path,
          text: path.includes("/") ? "Save file" : `Save ${path}`,
          "aria-label": `Save ${path}`,
        });
        holder.replaceChildren(link, el("span", { class: "hint", text: ` (link valid ${answer.expires_in ? `${Math.round(answer.expires_in / 60)} min` : "a short while"})` }));
        link.click();
        link.focus();
      } catch (exc) {
        button.disabled = false;
        fail("manifest-error", `${path} could not be downloaded: ${exc.message}.`);
      }
    },
  });
  holder.append(button);
  return holder;
}

// -- audit ------------------------------------------------------------------------------------

async function audit(event) {
  event.preventDefault();
  fail("audit-error", "");
  const form = $("audit-form");
  const params = new URLSearchParams();
  for (const name of ["since", "until", "sub", "study"]) params.set(name, form.elements[name].value.trim());
  say("audit-status", "Reading the audit trail…");
  try {
    const answer = await call(api(`/research/audit?${params}`));
    const records = answer.records || [];
    $("audit").tBodies[0].replaceChildren(
      ...records.map((r) =>
        el(
          "tr",
          {},
          el("td", { text: r.ts }),
          el("td", { text: r.username || r.sub }),
          el("td", { text: r.action }),
          el("td", { text: String(r.status) }),
          el("td", {}, el("code", { text: (r.studies || []).join(" ") })),
          el("td", { text: String(r.count ?? "") }),
        ),
      ),
    );
    say(
      "audit-status",
      records.length
        ? `${plural(answer.total ?? records.length, "record")}${records.length < (answer.total || 0) ? `, the last ${records.length} shown` : ""}.`
        : "No record in that range: widen the dates or clear the user and study fields.",
    );
  } catch (exc) {
    say("audit-status", "");
    fail("audit-error", `The audit trail could not be read: ${exc.message}.`);
  }
}

// -- start up ---------------------------------------------------------------------------------

function wire() {
  $("login-local").addEventListener("submit", localSignIn);
  $("login-cognito-button").addEventListener("click", () => cognitoSignIn().catch((e) => fail("login-error", e.message)));
  $("logout").addEventListener("click", signOut);
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab.id));
    tab.addEventListener("keydown", tabKeys);
  }
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      const query = searchMode() === "query";
      show($("qido-fields"), !query);
      show($("query-fields"), query);
    });
  }
  $("search-form").addEventListener("submit", search);
  $("cohort-form").addEventListener("submit", buildCohort);
  $("export-form").addEventListener("submit", startExport);
  $("jobs-refresh").addEventListener("click", refreshJobs);
  $("audit-form").addEventListener("submit", audit);
}

async function boot() {
  wire();
  try {
    const answer = await fetch("config.json", { cache: "no-store" });
    if (!answer.ok) throw new Error(`config.json answered ${answer.status}`);
    state.config = await answer.json();
    if (!state.config.api || !state.config.dicomweb) throw new Error("config.json names no api or dicomweb URL");
  } catch (exc) {
    say("boot", "");
    fail("fatal", `The portal cannot start: ${exc.message}. Ask the administrator to deploy its config.json.`);
    return;
  }
  say("boot", "");
  show($("boot"), false);
  try {
    if (state.config.auth && state.config.auth.mode === "cognito") await cognitoReturn();
  } catch (exc) {
    showLogin();
    fail("login-error", exc.message);
    return;
  }
  state.token = state.token || sessionStorage.getItem(TOKEN_KEY);
  showLogin();
  if (state.token) await start();
}

boot();
