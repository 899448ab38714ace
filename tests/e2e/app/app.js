// A minimal SMART on FHIR app, as an app developer would write it with the JS client
// (fhirclient 2.x, its prebuilt browser bundle, the global `FHIR`).
//
// launch.html: `FHIR.oauth2.authorize` finds the authorization server through
//   {iss}/.well-known/smart-configuration (standalone launch: ?iss=...; EHR launch:
//   ?iss=...&launch=...), with PKCE S256 required. A `login_hint` in the page's query (the
//   test's headless "login") is appended to the authorization URL.
// index.html: `FHIR.oauth2.ready` exchanges the code (a CORS request to the token endpoint),
//   then: read the patient in context, page through the patient's Observations, POST
//   Observation/_search for laboratory results and POST Condition/_search.
// The outcome is shown on the page and left in `window.__smartResult` (`__smartDone` = true).
'use strict';

const CLIENT_ID = 'smart-browser-app';
const STANDALONE_SCOPE = 'openid fhirUser launch/patient patient/*.rs offline_access';
const EHR_SCOPE = 'openid fhirUser launch patient/*.rs';
const FORM = { 'Content-Type': 'application/x-www-form-urlencoded' };

function text(id, value, cls) {
  const node = document.getElementById(id);
  node.textContent = value;
  if (cls) node.className = cls;
}

function codes(concepts) {
  return (concepts || []).flatMap((c) => (c.coding || []).map((x) => x.code));
}

function summarize(bundle) {
  return ((bundle && bundle.entry) || []).map(({ resource }) => ({
    resourceType: resource.resourceType,
    id: resource.id,
    subject: resource.subject ? resource.subject.reference : null,
    status: resource.status || null,
    category: codes(resource.category),
    code: codes(resource.code ? [resource.code] : []),
    security: ((resource.meta && resource.meta.security) || []).map((s) => s.code),
  }));
}

function table(id, title, rows) {
  const section = document.getElementById(id);
  const h2 = document.createElement('h2');
  h2.textContent = `${title} (${rows.length})`;
  const t = document.createElement('table');
  t.innerHTML = '<tr><th>type</th><th>id</th><th>subject</th><th>status</th><th>code</th></tr>';
  for (const r of rows.slice(0, 12)) {
    const tr = t.insertRow();
    for (const v of [r.resourceType, r.id, r.subject, r.status, r.code.join(', ')]) {
      tr.insertCell().textContent = v || '';
    }
  }
  section.replaceChildren(h2, t);
}

function finish(result) {
  window.__smartResult = result;
  window.__smartDone = true;
  if (result.error) text('status', `Failed: ${result.error}`, 'error');
  else text('status', `Done (${result.steps.join(', ')}) on ${result.origin}`);
}

async function launch() {
  const params = new URLSearchParams(window.location.search);
  const url = await FHIR.oauth2.authorize({
    clientId: CLIENT_ID,
    scope: params.has('launch') ? EHR_SCOPE : STANDALONE_SCOPE,
    redirectUri: 'index.html',
    pkceMode: 'required',
    noRedirect: true,
  });
  const hint = params.get('login_hint');
  window.location.href = hint ? `${url}&login_hint=${encodeURIComponent(hint)}` : url;
}

async function run() {
  const result = { origin: window.location.origin, steps: [] };
  try {
    const client = await FHIR.oauth2.ready();
    const token = client.state.tokenResponse;
    Object.assign(result, {
      serverUrl: client.state.serverUrl,
      patientId: client.patient.id,
      tokenPatient: token.patient || null,
      scope: token.scope,
      refreshToken: Boolean(token.refresh_token),
      fhirUser: client.getFhirUser(),
    });
    result.steps.push('token');

    const patient = await client.patient.read();
    const name = (patient.name || [])[0] || {};
    result.patient = { resourceType: patient.resourceType, id: patient.id };
    text('patient', `Patient/${patient.id}: ${[...(name.given || []), name.family].join(' ')}`);
    result.steps.push('patient');

    result.pages = [];
    await client.request(`Observation?patient=${encodeURIComponent(patient.id)}&_count=10`, {
      pageLimit: 0,
      onPage: (bundle) => {
        result.pages.push({
          links: (bundle.link || []).map((l) => ({ relation: l.relation, url: l.url })),
          entries: summarize(bundle),
        });
      },
    });
    table('observations', `Observations, ${result.pages.length} pages`, result.pages.flatMap((p) => p.entries));
    result.steps.push('observations');

    const labs = await client.request({
      url: 'Observation/_search',
      method: 'POST',
      headers: FORM,
      body: new URLSearchParams({ category: 'laboratory', _count: '100' }).toString(),
    });
    result.labs = summarize(labs);
    table('labs', 'Laboratory results (POST _search)', result.labs);
    const conditions = await client.request({
      url: 'Condition/_search',
      method: 'POST',
      headers: FORM,
      body: '_count=100',
    });
    result.conditions = summarize(conditions);
    table('conditions', 'Conditions (POST _search)', result.conditions);
    result.steps.push('post-search');
  } catch (error) {
    result.error = String((error && error.message) || error);
  }
  finish(result);
}

if (window.location.pathname.endsWith('/launch.html')) {
  launch().catch((error) => finish({ origin: window.location.origin, steps: [], error: String(error) }));
} else {
  run();
}
