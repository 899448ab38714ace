// A SMART on FHIR authorization server for the end-to-end tests: panva/oidc-provider 9.x on
// 127.0.0.1, configured entirely from one JSON document in SMART_AS_CONFIG:
//
//   { "port": 4000,
//     "audience": "http://127.0.0.1:8080/r4",       // the gateway's base: default resource + aud
//     "jwks": { "keys": [ ... ] },                   // private signing keys, a unique kid each
//     "clients": [ { "client_id", "client_secret"?, "redirect_uris"?, "kind": "public" |
//                    "confidential" | "backend" } ],
//     "launches": { "<launch id>": { "patient": "<id>", "fhirUser": "Practitioner/<id>" } } }
//
// What it does, and why (each is something a SMART AS must do that oidc-provider does not do by
// itself):
// - Authorization code + PKCE S256 for the app clients (public: token_endpoint_auth_method
//   none; confidential: client_secret_basic); client_credentials for the backend client.
// - A headless, auto-approving interaction: the user comes from `login_hint`
//   (`Patient/<id>` logs in that patient; `Practitioner/<id>` a clinician, who picks a patient
//   with `Practitioner/<id>|patient=<id>` when `launch/patient` is asked for), or, in an EHR
//   launch, from the `launch` value (SMART_AS_CONFIG.launches). `aud` must be the gateway's base.
// - JWT access tokens (RFC 9068, `typ: at+jwt`) for the gateway's audience even without a
//   `resource` parameter (the Python fhirclient sends only `aud`), carrying `scope`, `patient`
//   and `fhirUser`; the token response carries `patient`; the ID token carries `fhirUser`.
// - The SMART scopes are declared (oidc-provider silently drops scopes it does not know).
// - Refresh tokens for `offline_access`: oidc-provider removes that scope unless the request
//   says `prompt=consent`, which SMART apps do not send, so the requested scope is remembered
//   when the interaction starts and `issueRefreshToken` is overridden.
// Prints "listening <issuer>" once it accepts connections; one line per interaction decision.

import http from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

const settings = JSON.parse(process.env.SMART_AS_CONFIG || '{}');
const { port, audience, jwks } = settings;
if (!port || !audience || !jwks) {
  console.error('SMART_AS_CONFIG needs port, audience and jwks');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const launches = settings.launches || {};

const smartScopes = [
  'patient/*.rs',
  'patient/*.read',
  'patient/Patient.rs',
  'patient/Observation.rs',
  'patient/Condition.rs',
  'user/*.rs',
  'user/*.read',
  'system/*.rs',
  'system/*.read',
];
const oidcScopes = ['openid', 'fhirUser', 'profile', 'offline_access', 'launch', 'launch/patient'];
const resourceScope = smartScopes.join(' ');

const CLIENT_KINDS = {
  public: {
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  },
  confidential: {
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  },
  backend: {
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
};

const clients = (settings.clients || []).map(({ kind, ...client }) => ({
  ...CLIENT_KINDS[kind],
  scope: [...oidcScopes, ...smartScopes].join(' '),
  ...client,
}));

// grantId -> { patient, fhirUser }: the launch context, for tokens and the token response
const contexts = new Map();
// interaction uid -> the scope the app asked for (before offline_access was filtered out)
const requestedScopes = new Map();
// grants for which the app asked for offline_access
const offlineGrants = new Set();

const configuration = {
  clients,
  jwks,
  scopes: [...oidcScopes, ...smartScopes],
  claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
  conformIdTokenClaims: false, // SMART apps read fhirUser from the ID token of a code flow
  extraParams: ['launch', 'aud'],
  cookies: { keys: ['e2e-only-cookie-key-not-a-secret'] },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, fhirUser: id.split('|')[0] };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) throw new Provider.errors.InvalidTarget();
        return {
          scope: resourceScope,
          audience,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  clientBasedCORS: (ctx, origin, client) =>
    client.redirectUris.some((uri) => new URL(uri).origin === origin),
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') &&
    (code.scopes.has('offline_access') || offlineGrants.has(code.grantId)),
  expiresWithSession: async () => false,
  extraTokenClaims: async (ctx, token) => {
    const context = token.grantId ? contexts.get(token.grantId) : undefined;
    if (!context) return undefined;
    const claims = { fhirUser: context.fhirUser };
    if (context.patient) claims.patient = context.patient;
    return claims;
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 3600,
    IdToken: 600,
    Interaction: 600,
    RefreshToken: 3600,
    Session: 3600,
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('interaction.started', (ctx) => {
  const uid = ctx.oidc.entities.Interaction?.uid;
  const raw = ctx.method === 'POST' ? ctx.request.body?.scope : ctx.query.scope;
  if (uid && typeof raw === 'string') requestedScopes.set(uid, raw.split(' '));
});

// The SMART token response carries the launch context (`patient`) beside the tokens.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route !== 'token' || ctx.status !== 200 || !ctx.body?.access_token) return;
  const { AuthorizationCode: code, RefreshToken: refresh } = ctx.oidc.entities;
  const grantId = code?.grantId || refresh?.grantId;
  const context = grantId ? contexts.get(grantId) : undefined;
  if (context?.patient) ctx.body.patient = context.patient;
});

// The user and context for one authorization request, or an error description.
function resolveUser(params, scopes) {
  if (params.aud !== audience) return { error: `aud must be ${audience}` };
  if (params.launch) {
    const launch = launches[params.launch];
    if (!launch) return { error: 'unknown launch' };
    return { fhirUser: launch.fhirUser, patient: launch.patient };
  }
  const hint = params.login_hint || '';
  const [user, extra] = hint.split('|');
  if (!/^(Patient|Practitioner)\/[A-Za-z0-9\-.]{1,64}$/.test(user)) {
    return { error: 'login_hint must name Patient/<id> or Practitioner/<id>' };
  }
  const wantsPatient = scopes.includes('launch/patient');
  if (user.startsWith('Patient/')) {
    return { fhirUser: user, patient: wantsPatient ? user.slice('Patient/'.length) : undefined };
  }
  const picked = /^patient=([A-Za-z0-9\-.]{1,64})$/.exec(extra || '');
  if (wantsPatient && !picked) return { error: 'a clinician must pick a patient' };
  return { fhirUser: user, patient: picked ? picked[1] : undefined };
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, params } = details;
  const requested = requestedScopes.get(uid) || String(params.scope || '').split(' ');
  requestedScopes.delete(uid);
  const user = resolveUser(params, requested);
  if (user.error) {
    console.log(`interaction ${params.client_id}: refused (${user.error})`);
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: user.error },
      { mergeWithLastSubmission: false },
    );
    return;
  }
  const accountId = user.patient ? `${user.fhirUser}|${user.patient}` : user.fhirUser;
  const grant = new provider.Grant({ accountId, clientId: params.client_id });
  // The SMART scopes are declared (so listed in scopes_supported), which makes them OIDC
  // scopes to oidc-provider too: they are granted as both.
  const known = requested.filter((s) => oidcScopes.includes(s) || smartScopes.includes(s));
  const resource = requested.filter((s) => smartScopes.includes(s));
  if (known.length) grant.addOIDCScope(known.join(' '));
  if (known.includes('fhirUser')) grant.addOIDCClaims(['fhirUser']);
  if (resource.length) grant.addResourceScope(audience, resource.join(' '));
  const grantId = await grant.save();
  contexts.set(grantId, { patient: user.patient, fhirUser: user.fhirUser });
  if (requested.includes('offline_access')) offlineGrants.add(grantId);
  const launch = params.launch ? 'EHR launch' : 'standalone';
  console.log(`interaction ${params.client_id}: ${launch}, ${user.fhirUser}, scopes ${requested.join(' ')}`);
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      console.error('interaction failed', err);
      if (!res.headersSent) {
        res.statusCode = 500;
        res.end('interaction failed');
      }
    });
    return;
  }
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
