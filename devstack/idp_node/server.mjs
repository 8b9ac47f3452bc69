// Local OpenID Connect provider shaped like Authentik, for the BioImage Gateway
// devstack and tests. NOT for production: users and passwords come from a
// plain JSON file and every store is in memory.
//
// The protocol work is done by the certified `oidc-provider` package; this file
// only configures it with Authentik's URLs and claims and adds a login page.
//
//   node server.mjs CONFIG.json
//
// CONFIG.json:
//   {
//     "port": 0,                      // 0: pick a free port (see ready_file)
//     "host": "127.0.0.1",            // loopback only
//     "slug": "bioimage-gateway",     // Authentik application slug
//     "issuer_base": "http://127.0.0.1:PORT",   // optional; default from host/port
//     "users_file": "/path/users.json",          // re-read on every use
//     "clients": [{"client_id", "client_secret", "redirect_uris", "post_logout_redirect_uris",
//                  "token_endpoint_auth_method"?}],
//     "cookie_keys": ["..."],
//     "ttl": {"AccessToken": 300, ...},          // optional, seconds
//     "ready_file": "/path/ready.json",          // optional; written once listening
//     "key_file": "/path/signing-key.json",      // optional; signing key kept across restarts
//     "clock_tolerance": 0,                      // optional, seconds
//     "email_scope_mapping": "authentik-default" // optional; see EMAIL_SCOPE_MAPPINGS
//   }
//
// users.json: a list (or {"users": [...]}) of
//   {"username", "password", "groups": [], "email"?, "name"?, "sub"?, "attributes"?: {}}

import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, join } from 'node:path';
import * as querystring from 'node:querystring';
import { fileURLToPath } from 'node:url';

import Provider from 'oidc-provider';

const HERE = dirname(fileURLToPath(import.meta.url));
const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
// Authentik's defaults: codes 1 min, access tokens 5 min, refresh tokens 30 days.
const DEFAULT_TTL = {
  AuthorizationCode: 60,
  AccessToken: 300,
  IdToken: 300,
  RefreshToken: 30 * 24 * 3600,
  Interaction: 3600,
  Session: 14 * 24 * 3600,
  Grant: 30 * 24 * 3600,
};

function log(...args) {
  console.log(new Date().toISOString(), ...args);
}

function die(message) {
  console.error(`idp: ${message}`);
  process.exit(2);
}

if (process.argv.length < 3) die('usage: node server.mjs CONFIG.json');
const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const host = config.host ?? '127.0.0.1';
if (!LOOPBACK.has(host)) die(`refusing to listen on ${host}: this provider is for loopback only`);
const slug = config.slug ?? 'bioimage-gateway';
if (!/^[A-Za-z0-9_-]+$/.test(slug)) die(`invalid application slug ${slug}`);
if (!config.users_file) die('users_file is required');
if (!Array.isArray(config.clients) || config.clients.length === 0) die('at least one client is required');

const PATHS = {
  discovery: `/application/o/${slug}/.well-known/openid-configuration`,
  authorization: '/application/o/authorize/',
  token: '/application/o/token/',
  userinfo: '/application/o/userinfo/',
  revocation: '/application/o/revoke/',
  introspection: '/application/o/introspect/',
  end_session: `/application/o/${slug}/end-session/`,
  jwks: `/application/o/${slug}/jwks/`,
  flow: '/if/flow/',
  health: '/-/health/live/',
};
// The claims of the scope 'email', as Authentik's scope mappings return them.
//   authentik-default: the shipped mapping (blueprints/system/providers-oauth2.yaml,
//     managed "goauthentik.io/providers/oauth2/scope-email"): email_verified is
//     False for everyone since Authentik 2025.10 (goauthentik/authentik#16206).
//   verified: the custom mapping Authentik's docs give for a site whose
//     addresses are verified by another process: email_verified True.
//   user-attribute: the docs' other custom mapping,
//     request.user.attributes.get("email_verified", False).
const EMAIL_SCOPE_MAPPINGS = {
  'authentik-default': () => false,
  verified: () => true,
  'user-attribute': (user) => user.attributes.email_verified === true,
};
const emailMapping = config.email_scope_mapping ?? 'authentik-default';
if (!Object.hasOwn(EMAIL_SCOPE_MAPPINGS, emailMapping)) die(`unknown email_scope_mapping ${emailMapping}`);
const emailVerified = EMAIL_SCOPE_MAPPINGS[emailMapping];

const CLIENT_AUTH_ROUTES = new Set([PATHS.token, PATHS.revocation, PATHS.introspection]);
const configuredClients = new Set(config.clients.map((c) => c.client_id));

// ---------------------------------------------------------------- users

function subjectFor(username) {
  // Authentik's default subject mode: a hash of the user, not the username.
  return createHash('sha256').update(`bioimage-gateway-idp:${username}`).digest('hex');
}

// The users file, parsed again only when it changes (tests change a user's
// groups at run time); parsing it for every lookup cost a burst of 200
// sign-ins a third of the provider's time.
let usersCache = { stamp: null, byName: new Map(), bySub: new Map() };

function readUsers() {
  const st = statSync(config.users_file, { bigint: true });
  const stamp = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  if (usersCache.stamp === stamp) return usersCache;
  const raw = JSON.parse(readFileSync(config.users_file, 'utf8'));
  const list = Array.isArray(raw) ? raw : raw.users;
  const users = list.map((u) => ({
    username: u.username,
    password: u.password,
    groups: Array.isArray(u.groups) ? u.groups.map(String) : [],
    email: u.email ?? `${u.username}@example.org`,
    name: u.name ?? u.username.charAt(0).toUpperCase() + u.username.slice(1),
    sub: u.sub ?? subjectFor(u.username),
    attributes: u.attributes && typeof u.attributes === 'object' ? u.attributes : {},
  }));
  const byName = new Map();
  const bySub = new Map();
  for (const u of users) { // the first entry of a name wins, as a search of the list would
    if (!byName.has(u.username)) byName.set(u.username, u);
    if (!bySub.has(u.sub)) bySub.set(u.sub, u);
  }
  usersCache = { stamp, byName, bySub };
  return usersCache;
}

function sameSecret(given, expected) {
  const a = createHash('sha256').update(String(given)).digest();
  const b = createHash('sha256').update(String(expected)).digest();
  return timingSafeEqual(a, b);
}

function checkPassword(username, password) {
  const user = readUsers().byName.get(username);
  if (!user || typeof user.password !== 'string') return undefined;
  return sameSecret(password, user.password) ? user : undefined;
}

async function findAccount(_ctx, sub) {
  const user = readUsers().bySub.get(sub);
  if (!user) return undefined; // removed from the file: tokens for it stop working
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        preferred_username: user.username,
        nickname: user.username,
        name: user.name,
        given_name: user.name,
        email: user.email,
        email_verified: emailVerified(user),
        groups: user.groups,
      };
    },
  };
}

// ---------------------------------------------------------------- pages

const LOGIN_TEMPLATE = readFileSync(join(HERE, 'login.html'), 'utf8');

function esc(value) {
  return String(value ?? '')
    .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

function render(template, fields) {
  return template.replace(/\{\{(\w+)\}\}/g, (_, key) => fields[key] ?? '');
}

function sendHtml(res, status, body) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
  });
  res.end(body);
}

function loginPage(res, { action, client, username = '', error = '', status = 200 }) {
  sendHtml(res, status, render(LOGIN_TEMPLATE, {
    action: esc(action),
    client: esc(client),
    username: esc(username),
    error: error ? `<p class="error" id="login-error" role="alert">${esc(error)}</p>` : '',
  }));
}

function plainPage(title, message) {
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title></head>`
    + `<body><main><h1>${esc(title)}</h1><p>${esc(message)}</p></main></body></html>`;
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = plainPage('Request refused', `${out.error}: ${out.error_description ?? ''}`);
}

async function logoutSource(ctx, form) {
  // Only a browser that runs no script ever sees this: the front handler
  // confirms the logout itself, as Authentik's default invalidation flow does.
  ctx.body = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Signing out</title></head>
<body><main><h1>Signing out</h1>${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button></main>
<script>document.forms[0].insertAdjacentHTML('beforeend','<input type="hidden" name="logout" value="yes">');document.forms[0].submit();</script>
</body></html>`;
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = plainPage('Signed out', 'You have been signed out.');
}

// ---------------------------------------------------------------- provider

function signingKey() {
  // One RSA key, like Authentik's per-provider signing certificate: stable for
  // the process lifetime, and across restarts when key_file is set (so an ID
  // token issued before a restart is still a valid id_token_hint at logout).
  if (config.key_file) {
    try {
      return JSON.parse(readFileSync(config.key_file, 'utf8'));
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
    }
  }
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = createHash('sha256').update(jwk.n).digest('base64url').slice(0, 32);
  const key = { ...jwk, kid, alg: 'RS256', use: 'sig' };
  if (config.key_file) {
    writeFileSync(`${config.key_file}.tmp`, JSON.stringify(key), { mode: 0o600 });
    renameSync(`${config.key_file}.tmp`, config.key_file);
  }
  return key;
}

// Where the provider keeps codes, sessions, grants and tokens: plain maps, each entry
// dropped when it expires. (The package's built-in store is an LRU of 1000 entries: a
// class of 200 signing in at once evicted authorization codes before they were used.
// Authentik keeps these in its database, without such a limit.)
const stores = new Map();
const grantIndex = new Map(); // grantId -> Set of [model, id]

class ExpiringMemoryAdapter {
  constructor(model) {
    this.model = model;
    if (!stores.has(model)) stores.set(model, new Map());
    this.entries = stores.get(model);
  }

  _live(id) {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt && entry.expiresAt <= Date.now()) {
      this.entries.delete(id);
      return undefined;
    }
    return entry.payload;
  }

  async upsert(id, payload, expiresIn) {
    this.entries.set(id, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(JSON.stringify([this.model, id]));
    }
  }

  async find(id) { return this._live(id); }

  async findByUid(uid) {
    for (const id of this.entries.keys()) {
      const payload = this._live(id);
      if (payload?.uid === uid) return payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const id of this.entries.keys()) {
      const payload = this._live(id);
      if (payload?.userCode === userCode) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const payload = this._live(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { this.entries.delete(id); }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) {
      const [model, id] = JSON.parse(key);
      stores.get(model)?.delete(id);
    }
    grantIndex.delete(grantId);
  }
}

// Expired entries of models nobody asks for again go too, once a minute.
setInterval(() => {
  const now = Date.now();
  for (const entries of stores.values()) {
    for (const [id, entry] of entries) if (entry.expiresAt && entry.expiresAt <= now) entries.delete(id);
  }
}, 60_000).unref();

function buildProvider(issuer) {
  const ttl = { ...DEFAULT_TTL, ...(config.ttl ?? {}) };
  const ttlFunctions = Object.fromEntries(Object.entries(ttl).map(([k, v]) => [k, () => Number(v)]));
  const provider = new Provider(issuer, {
    adapter: ExpiringMemoryAdapter,
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    })),
    jwks: { keys: [signingKey()] },
    cookies: {
      keys: config.cookie_keys?.length ? config.cookie_keys : [randomBytes(32).toString('hex')],
      names: {
        session: 'authentik_session',
        interaction: 'authentik_interaction',
        resume: 'authentik_interaction_resume',
      },
    },
    findAccount,
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'given_name', 'preferred_username', 'nickname', 'groups'],
      email: ['email', 'email_verified'],
    },
    // Authentik puts the scope claims into the ID token too.
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    // Provider and clients share one clock here: expiry means expiry (the
    // package's default is 15 s of leeway).
    clockTolerance: Number(config.clock_tolerance ?? 0),
    pkce: { required: () => true },
    routes: {
      authorization: PATHS.authorization,
      token: PATHS.token,
      userinfo: PATHS.userinfo,
      jwks: PATHS.jwks,
      end_session: PATHS.end_session,
      revocation: PATHS.revocation,
      introspection: PATHS.introspection,
    },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    },
    interactions: {
      url: (_ctx, interaction) => `${PATHS.flow}${interaction.uid}/`,
    },
    // No consent screen for the configured (first-party) clients: the grant
    // covers whatever they ask for.
    async loadExistingGrant(ctx) {
      const { client, session } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (!configuredClients.has(client.clientId) || !session.accountId) return grant;
      if (!grant) {
        grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      }
      const scope = ctx.oidc.params.scope;
      if (scope) grant.addOIDCScope(scope);
      const claims = ctx.oidc.params.claims ? JSON.parse(ctx.oidc.params.claims) : undefined;
      if (claims?.id_token) grant.addOIDCClaims(Object.keys(claims.id_token));
      if (claims?.userinfo) grant.addOIDCClaims(Object.keys(claims.userinfo));
      await grant.save();
      return grant;
    },
    clientBasedCORS: () => false,
    renderError,
    ttl: ttlFunctions,
  });
  provider.on('server_error', (_ctx, err) => log('server_error', err));
  for (const event of ['grant.error', 'authorization.error', 'end_session.error', 'userinfo.error',
    'revocation.error', 'introspection.error']) {
    provider.on(event, (_ctx, err) => log(event, err.message, err.error_description ?? '', err.error_detail ?? ''));
  }
  return provider;
}

// ---------------------------------------------------------------- HTTP front

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req.iterator({ destroyOnReturn: false })) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function interaction(provider, req, res, url) {
  const uid = url.pathname.slice(PATHS.flow.length).split('/')[0];
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch {
    sendHtml(res, 400, plainPage('Login expired', 'This login attempt has expired. Go back to the application and sign in again.'));
    return;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, plainPage('Login expired', 'This login attempt does not match. Go back to the application and sign in again.'));
    return;
  }
  const { prompt, params } = details;
  const action = `${PATHS.flow}${uid}/`;
  const client = params.client_id ?? '';

  if (prompt.name === 'consent') {
    // No consent screen for the configured clients (Authentik's implicit
    // consent flow); any other client is refused.
    if (!configuredClients.has(client)) {
      await provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'consent is not available for this client',
      }, { mergeWithLastSubmission: false });
      return;
    }
    const grantId = await grantFor(provider, details, details.session.accountId);
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  if (req.method === 'GET') {
    loginPage(res, { action, client });
    return;
  }
  if (req.method !== 'POST') {
    sendHtml(res, 405, plainPage('Method not allowed', req.method));
    return;
  }
  const form = querystring.parse(await readBody(req));
  const username = String(form.username ?? '').trim();
  const user = checkPassword(username, String(form.password ?? ''));
  if (!user) {
    log('login failed for', JSON.stringify(username));
    loginPage(res, { action, client, username, error: 'Invalid username or password.' });
    return;
  }
  log('login ok for', user.username);
  const result = { login: { accountId: user.sub, amr: ['pwd'] } };
  if (configuredClients.has(client)) {
    // Consent in the same step, so the browser goes straight back to the client.
    result.consent = { grantId: await grantFor(provider, details, user.sub) };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function grantFor(provider, details, accountId) {
  const { params } = details;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ clientId: params.client_id, accountId });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  if (params.claims) {
    const claims = JSON.parse(params.claims);
    if (claims.id_token) grant.addOIDCClaims(Object.keys(claims.id_token));
    if (claims.userinfo) grant.addOIDCClaims(Object.keys(claims.userinfo));
  }
  return grant.save();
}

function authorizationUrl(url) {
  // oidc-provider follows OpenID Connect Core and drops offline_access unless
  // the request also asks for prompt=consent; Authentik issues a refresh token
  // for offline_access alone. Add the prompt, which the consent-free flow
  // above then answers at once.
  const scope = (url.searchParams.get('scope') ?? '').split(' ');
  if (!scope.includes('offline_access')) return undefined;
  const prompt = (url.searchParams.get('prompt') ?? '').split(' ').filter(Boolean);
  if (prompt.includes('consent') || prompt.includes('none')) return undefined;
  url.searchParams.set('prompt', [...prompt, 'consent'].join(' '));
  return `${url.pathname}?${url.searchParams}`;
}

function cookieHeader(existing, setCookies) {
  const jar = new Map();
  for (const part of (existing ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) jar.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
  }
  for (const line of setCookies) {
    const pair = line.split(';')[0];
    const i = pair.indexOf('=');
    if (i > 0) jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
  }
  return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
}

async function endSession(req, res, self) {
  // RP-initiated logout without a confirmation page: run oidc-provider's own
  // end-session request, then confirm it on the user's behalf, and hand the
  // browser the final redirect (to post_logout_redirect_uri when valid).
  const headers = { cookie: req.headers.cookie ?? '', 'x-idp-internal': '1', host: req.headers.host };
  const first = await fetch(`${self}${req.url}`, { headers, redirect: 'manual' });
  const body = await first.text();
  const match = first.status === 200 && body.match(/name="xsrf" value="([^"]+)"/);
  const action = first.status === 200 && body.match(/<form[^>]*action="([^"]+)"/);
  if (!match || !action) {
    res.writeHead(first.status, Object.fromEntries(first.headers));
    res.end(body);
    return;
  }
  const setCookies = first.headers.getSetCookie();
  const second = await fetch(new URL(action[1], self), {
    method: 'POST',
    redirect: 'manual',
    headers: {
      cookie: cookieHeader(req.headers.cookie, setCookies),
      'content-type': 'application/x-www-form-urlencoded',
      'x-idp-internal': '1',
      host: req.headers.host,
    },
    body: querystring.stringify({ xsrf: match[1], logout: 'yes' }),
  });
  const out = { 'cache-control': 'no-store' };
  const location = second.headers.get('location');
  if (location) out.location = location;
  const allCookies = [...setCookies, ...second.headers.getSetCookie()];
  if (allCookies.length) out['set-cookie'] = allCookies;
  res.writeHead(location ? 302 : second.status, out);
  res.end(location ? '' : await second.text());
}

function basicCredentials(header) {
  const match = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!match) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return undefined;
  const dec = (s) => { try { return decodeURIComponent(s.replace(/\+/g, '%20')); } catch { return s; } };
  return { id: dec(decoded.slice(0, i)), secret: dec(decoded.slice(i + 1)) };
}

async function normalizeClientAuth(req) {
  // Authentik accepts client_secret_basic and client_secret_post alike (and
  // both at once, as some OAuthenticator releases send); a registered
  // oidc-provider client takes exactly one. Present the credentials as a
  // Basic header, which is what the clients here are registered with.
  const type = String(req.headers['content-type'] ?? '');
  if (!type.startsWith('application/x-www-form-urlencoded')) return;
  const raw = await readBody(req);
  const form = querystring.parse(raw);
  const basic = basicCredentials(req.headers.authorization);
  if (typeof form.client_secret === 'string' && typeof form.client_id === 'string'
      && configuredClients.has(form.client_id)) {
    if (!basic) {
      const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
      req.headers.authorization = `Basic ${Buffer.from(`${enc(form.client_id)}:${enc(form.client_secret)}`).toString('base64')}`;
      delete form.client_id;
      delete form.client_secret;
    } else if (basic.id === form.client_id && basic.secret === form.client_secret) {
      delete form.client_id;
      delete form.client_secret;
    }
  }
  req.body = querystring.stringify(form);
}

let provider;
let callback;
let selfUrl;

async function handle(req, res) {
  const url = new URL(req.url, 'http://idp.invalid');
  const started = Date.now();
  res.on('finish', () => {
    if (!req.headers['x-idp-internal']) log(req.method, url.pathname, res.statusCode, `${Date.now() - started}ms`);
  });
  if (!provider) {
    sendHtml(res, 503, plainPage('Starting', 'The identity provider is starting.'));
    return;
  }
  try {
    if (url.pathname === PATHS.health) {
      res.writeHead(204);
      res.end();
      return;
    }
    if (url.pathname === PATHS.discovery) {
      // Discovery lives under the application slug, as in Authentik.
      req.url = `/.well-known/openid-configuration${url.search}`;
    } else if (url.pathname.startsWith('/.well-known/')) {
      sendHtml(res, 404, plainPage('Not found', url.pathname));
      return;
    } else if (url.pathname.startsWith(PATHS.flow)) {
      await interaction(provider, req, res, url);
      return;
    } else if (url.pathname === PATHS.end_session && req.method === 'GET' && !req.headers['x-idp-internal']) {
      await endSession(req, res, selfUrl);
      return;
    } else if (url.pathname === PATHS.authorization && req.method === 'GET') {
      req.url = authorizationUrl(url) ?? req.url;
    } else if (CLIENT_AUTH_ROUTES.has(url.pathname) && req.method === 'POST') {
      await normalizeClientAuth(req);
    }
    await callback(req, res);
  } catch (err) {
    log('error', err?.stack ?? err);
    if (!res.headersSent) sendHtml(res, 500, plainPage('Error', 'The identity provider failed to handle this request.'));
    else res.end();
  }
}

const server = http.createServer((req, res) => { handle(req, res); });
server.listen(Number(config.port ?? 0), host, () => {
  const { port } = server.address();
  const urlHost = host.includes(':') ? `[${host}]` : host;
  selfUrl = `http://${urlHost}:${port}`;
  const base = (config.issuer_base ?? selfUrl).replace(/\/+$/, '');
  const issuer = `${base}/application/o/${slug}/`;
  provider = buildProvider(issuer);
  callback = provider.callback();
  const ready = {
    pid: process.pid, port, issuer, discovery_url: `${base}${PATHS.discovery}`,
  };
  if (config.ready_file) {
    writeFileSync(`${config.ready_file}.tmp`, JSON.stringify(ready));
    renameSync(`${config.ready_file}.tmp`, config.ready_file);
  }
  log('ready', JSON.stringify(ready));
});

function shutdown(signal) {
  log(`stopping on ${signal}`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
