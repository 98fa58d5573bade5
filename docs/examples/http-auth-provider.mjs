// An example authentication provider module: asks an HTTP service whether a user name and
// password are valid. Load it with
//   auth: [{ provider: 'module', path: 'docs/examples/http-auth-provider.mjs', options: { url: 'https://auth.internal/check' } }]
// The service gets POST {"username","password","clientId"} and answers 200 {"ok":true,"roles":[...]}
// to allow, 200 {"ok":false} to deny; any other answer, or no answer in time, denies.
export default function createAuthenticator(options) {
  const url = String(options.url ?? '');
  if (!/^https?:\/\//.test(url)) throw new Error('http-auth-provider: options.url must be an http(s) URL');
  const timeoutMs = Number(options.timeoutMs ?? 2000);
  return {
    id: 'http-check',
    async authenticate(req, signal) {
      if (req.username === undefined || req.password === undefined) return { kind: 'abstain' };
      let body;
      try {
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ username: req.username, password: req.password.toString('utf8'), clientId: req.clientId }),
          signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
          redirect: 'error',
        });
        if (res.status !== 200) return { kind: 'deny', reason: 0x88, detail: `auth service answered HTTP ${res.status}` };
        body = await res.json();
      } catch (err) {
        return { kind: 'deny', reason: 0x88, detail: `auth service unreachable: ${err.name}` };
      }
      if (body?.ok !== true) return { kind: 'deny', reason: 0x86, detail: 'rejected by the auth service' };
      const roles = Array.isArray(body.roles) ? body.roles.filter((r) => typeof r === 'string') : [];
      return { kind: 'allow', value: { clientId: req.clientId, username: req.username, method: 'password', provider: 'http-check', roles, attributes: {} } };
    },
  };
}
