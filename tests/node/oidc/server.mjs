// A real OAuth 2.0 / OpenID authorization server (panva/oidc-provider 9.x) for the test suite.
//
// Configured entirely from the environment so that pytest can start it as a subprocess:
//   OIDC_PORT          port to listen on (127.0.0.1 only)
//   OIDC_AUDIENCE      the gateway's audience: the default resource, issued as a JWT (RFC 9068)
//   OIDC_OPAQUE_RESOURCE  a second resource indicator (RFC 8707) whose tokens are opaque,
//                      with the same audience, checked through introspection (RFC 7662)
//   OIDC_JWKS          the private signing JWK Set (JSON; every key has a unique kid)
//   OIDC_PATIENT       the SMART `patient` claim added to every access token
//   OIDC_CLIENTS       JSON list of [client_id, client_secret] pairs (client_credentials)
// Prints "listening <issuer>" on stdout once it accepts connections.
//
// Facts pinned by the tests: JWT access tokens carry `typ: at+jwt`; unknown scopes are dropped
// silently (SMART scopes are declared below); the introspection endpoint refuses JWT access
// tokens (they must be verified locally).

import http from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return value;
};

const port = Number(env('OIDC_PORT'));
const audience = env('OIDC_AUDIENCE');
const opaqueResource = env('OIDC_OPAQUE_RESOURCE');
const jwks = JSON.parse(env('OIDC_JWKS'));
const patient = process.env.OIDC_PATIENT || 'pat-123';
const clients = JSON.parse(env('OIDC_CLIENTS'));
const issuer = `http://127.0.0.1:${port}`;

const smartScopes = [
  'system/*.rs',
  'system/Patient.rs',
  'system/Observation.rs',
  'patient/*.rs',
  'patient/Observation.rs',
];
const resourceScope = smartScopes.join(' ');

const configuration = {
  clients: clients.map(([clientId, secret]) => ({
    client_id: clientId,
    client_secret: secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: resourceScope,
  })),
  jwks,
  scopes: ['openid', 'offline_access', ...smartScopes],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Any authenticated confidential client may introspect (the gateway is one).
      allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (resourceIndicator === audience) {
          return {
            scope: resourceScope,
            audience,
            accessTokenTTL: 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        }
        if (resourceIndicator === opaqueResource) {
          return {
            scope: resourceScope,
            audience,
            accessTokenTTL: 300,
            accessTokenFormat: 'opaque',
          };
        }
        throw new Provider.errors.InvalidTarget();
      },
    },
  },
  extraTokenClaims: async () => ({ patient }),
  ttl: { ClientCredentials: 300, AccessToken: 300 },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = http.createServer(provider.callback());
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
