// The OpenID Connect provider the browser tests log in through: the certified `oidc-provider`
// package (package.json pins it; ./scripts/setup.sh installs it with `npm ci`), with the dashboard as its
// one client and two test accounts. The protocol (discovery, authorization code + PKCE, tokens, ID token
// signing, end of session) is all oidc-provider's; this file supplies only what every deployment of it
// supplies itself: the accounts and the sign-in page (oidc-provider's own quick-start pages accept any
// name without a password, so they would not tell alice's password from bob's).
//
//   OIDC_PORT=9000 OIDC_REDIRECT_URI=http://localhost:8501/oauth2callback \
//   OIDC_CLIENT_ID=kdaudit OIDC_CLIENT_SECRET=... \
//   OIDC_ACCOUNTS='{"alice": {"password": "...", "name": "Alice Liddell", "email": "alice@example.test"}}' \
//   node tests/oidc/provider.js
//
// benchmarks/login.py starts it so (its ACCOUNTS: alice and bob). Issuer: http://127.0.0.1:$OIDC_PORT
// (discovery at /.well-known/openid-configuration). Test accounts only: in memory, fresh keys each
// start, nothing written to disk.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.js: set ${name} (see the comment at the top of tests/oidc/provider.js)`);
    process.exit(2);
  }
  return value;
};
const port = Number(need('OIDC_PORT'));
const redirectUri = need('OIDC_REDIRECT_URI');
const issuer = `http://127.0.0.1:${port}`;

const ACCOUNTS = JSON.parse(need('OIDC_ACCOUNTS')); // username → { password, name, email }

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: need('OIDC_CLIENT_ID'),
      client_secret: need('OIDC_CLIENT_SECRET'),
      redirect_uris: [redirectUri],
      // Streamlit's st.logout sends the user back to its redirect URI after the provider's end of session
      post_logout_redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  jwks: { keys: [generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' })] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  async findAccount(ctx, sub) {
    const account = Object.hasOwn(ACCOUNTS, sub) ? ACCOUNTS[sub] : undefined;
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, name: account.name, email: account.email, email_verified: true };
      },
    };
  },
  claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
  // The scopes' claims go into the ID token itself: Streamlit's st.user is the ID token's claims
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function signInPage(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in to the test provider</h1>
${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
  <label>Username <input name="login" autocomplete="username" autofocus></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

// The dashboard is this provider's own (first-party) client: its consent is given without asking.
async function grantConsent(details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  return { consent: { grantId: await grant.save() } };
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name === 'consent') {
    await provider.interactionFinished(req, res, await grantConsent(details), { mergeWithLastSubmission: true });
    return;
  }
  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const account = Object.hasOwn(ACCOUNTS, login) ? ACCOUNTS[login] : undefined;
    if (account && form.get('password') === account.password) {
      await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(signInPage(uid, 'Wrong username or password.'));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(signInPage(uid));
}

const oidc = provider.callback();
const server = createServer((req, res) => {
  const m = /^\/interaction\/([^/?]+)(?:\/(login))?(?:\?.*)?$/.exec(req.url);
  if (!m) return oidc(req, res);
  return interaction(req, res, m[1], m[2]).catch((err) => {
    console.error(err);
    res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(`sign-in failed: ${err.message}`);
  });
});
server.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
