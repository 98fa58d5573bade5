/**
 * The `certificate` provider: builds the Principal from the client certificate that the TLS
 * gate verified. Abstains when the connection has no verified certificate.
 *
 * @example
 * // listeners: [{ type: 'tls', ..., requireClientCert: true, auth: [{ provider: 'certificate', username: 'cn', clientId: 'cn', bindClientId: true }] }]
 */
import type { CertificateProviderConfig, IdentitySource } from '../config/tls-schema.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { TlsPeerInfo } from '../transport/types.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';

/** Certificate attributes kept on the Principal (`attributes.cert`) for policies and audit. */
export interface CertificateAttributes {
  cn?: string;
  subject: string;
  issuer: string;
  sans: string[];
  dns: string[];
  uris: string[];
  emails: string[];
  /** The SANs by kind (`%{cert.san.uri}` in policies reads `san.uri`). */
  san: { uri: string[]; dns: string[]; email: string[] };
  serial: string;
  fingerprint: string;
  notAfter: string;
}

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

function dn(name: Record<string, string | string[]> | undefined): string {
  if (name === undefined) return '';
  return Object.entries(name)
    .map(([k, v]) => (Array.isArray(v) ? v.map((x) => `${k}=${x}`).join(', ') : `${k}=${v}`))
    .join(', ');
}

export function certificateAttributes(t: TlsPeerInfo): CertificateAttributes {
  const sans = t.subjectAltNames ?? [];
  const of = (prefix: string) => sans.filter((s) => s.startsWith(prefix)).map((s) => s.slice(prefix.length));
  const cn = first(t.subject?.CN);
  const uris = of('URI:');
  const dns = of('DNS:');
  const emails = of('email:');
  return {
    ...(cn !== undefined ? { cn } : {}),
    subject: dn(t.subject),
    issuer: dn(t.issuer),
    sans,
    dns,
    uris,
    emails,
    san: { uri: uris, dns, email: emails },
    serial: t.serialNumber ?? '',
    fingerprint: (t.fingerprint256 ?? '').replace(/:/g, '').toLowerCase(),
    notAfter: t.validTo ?? '',
  };
}

/**
 * Picks the identity from the certificate. Refuses values that would defeat placeholder ACLs
 * (`%u`, `%c`, `%{cert.cn}`): MQTT wildcards `+` and `#` anywhere, `/` outside URIs, and
 * control characters (CVE-2017-7650 class).
 */
export function mapIdentity(attrs: CertificateAttributes, source: IdentitySource, uriPrefix?: string): { value?: string; error?: string } {
  let value: string | undefined;
  switch (source) {
    case 'none':
      return {};
    case 'cn':
      value = attrs.cn;
      break;
    case 'san-dns':
      value = attrs.dns[0];
      break;
    case 'san-uri':
      value = attrs.uris.find((u) => uriPrefix === undefined || u.startsWith(uriPrefix));
      break;
    case 'san-email':
      value = attrs.emails[0];
      break;
    case 'fingerprint':
      value = attrs.fingerprint;
      break;
  }
  if (value === undefined || value === '') return { error: `the certificate has no ${source}${source === 'san-uri' && uriPrefix ? ` starting with ${uriPrefix}` : ''}` };
  const forbidden = source === 'san-uri' ? /[#+\u0000-\u001f\u007f]/ : /[#+/\u0000-\u001f\u007f]/;
  if (forbidden.test(value)) return { error: `the certificate ${source} contains a character not allowed in an identity (${source === 'san-uri' ? '# +' : '# + /'} or a control character)` };
  return { value };
}

export class CertificateAuthenticator implements Authenticator {
  readonly id = 'certificate';

  /** The TLS gate verified the certificate: nothing here can be guessed. */
  checksGuessableSecret(): boolean {
    return false;
  }

  constructor(private readonly config: CertificateProviderConfig) {}

  async authenticate(req: ConnectRequest): Promise<Decision<Principal>> {
    return this.decideNow(req);
  }

  /** Everything it needs came with the handshake: it never waits. */
  decideNow(req: ConnectRequest): Decision<Principal> {
    const t = req.peer.tls;
    if (t === undefined || t.fingerprint256 === undefined) return { kind: 'abstain' };
    if (!t.authorized) return { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: `client certificate not verified (${t.authorizationError ?? 'unknown'})` };
    const attrs = certificateAttributes(t);
    const { username: userSource, clientId: idSource, bindClientId, uriPrefix, roles } = this.config;
    const user = mapIdentity(attrs, userSource, uriPrefix);
    if (user.error !== undefined) return { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: `username: ${user.error}` };
    if (bindClientId) {
      const bound = mapIdentity(attrs, idSource, uriPrefix);
      if (bound.error !== undefined) return { kind: 'deny', reason: ReasonCode.ClientIdentifierNotValid, detail: `client id: ${bound.error}` };
      if (bound.value !== undefined && req.clientId !== bound.value) {
        return { kind: 'deny', reason: ReasonCode.ClientIdentifierNotValid, detail: `client id must be the certificate ${idSource} '${bound.value}'` };
      }
    }
    const notAfter = Date.parse(attrs.notAfter);
    return {
      kind: 'allow',
      value: {
        clientId: req.clientId,
        ...(user.value !== undefined ? { username: user.value } : {}),
        method: 'certificate',
        provider: this.id,
        roles: [...roles],
        attributes: { cert: attrs, ...(req.username !== undefined ? { claimedUsername: req.username } : {}) },
        ...(Number.isFinite(notAfter) ? { expiresAt: notAfter } : {}),
      },
    };
  }
}
