/**
 * What the operations listener needs before it can start, read when the broker is built so that a
 * bad file stops createBroker with a ConfigError naming its key, as every other file does: the
 * token file, the admin policy, and the TLS files.
 */
import fs from 'node:fs';
import type { AuditEvent } from '../audit/types.ts';
import { PolicyError } from '../authz/casbin/policy-file.ts';
import { ConfigError } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { AdminAuthorizer } from './admin-authz.ts';
import type { HttpConfig } from './context.ts';
import { TokenAuthenticator } from './token-auth.ts';
import { TokenFileError } from './token-file.ts';

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
  crl?: Buffer;
}

export interface OpsSetup {
  tokens: TokenAuthenticator | undefined;
  authz: AdminAuthorizer;
  /** Reads the TLS files again (for a reload); throws a ConfigError naming the file's key. */
  readTls(): TlsFiles | undefined;
}

function configError(key: string, message: string): ConfigError {
  return new ConfigError(`invalid configuration:\n  - ${key}: ${message}`, [{ key, message }]);
}

export function prepareOps(http: HttpConfig, audit: (event: AuditEvent) => void, log: Logger): OpsSetup {
  let tokens: TokenAuthenticator | undefined;
  if (http.auth.tokens !== undefined) {
    const file = http.auth.tokens;
    try {
      tokens = new TokenAuthenticator(file, http.auth.tokenCacheSeconds * 1000, (r) => {
        (r.ok ? log.info.bind(log) : log.error.bind(log))({ file }, `admin token file reload: ${r.detail}`);
        audit({ event: 'reload', action: 'admin-tokens', decision: r.ok ? 'allow' : 'deny', reason: r.detail, detail: { file } });
      });
    } catch (err) {
      if (!(err instanceof TokenFileError)) throw err;
      throw configError('http.auth.tokens', err.message);
    }
    if (tokens.size === 0) log.warn({ file }, 'the admin token file holds no token yet: add one with `portcullis token add NAME --roles admin`');
  }
  let authz: AdminAuthorizer;
  try {
    authz = new AdminAuthorizer(http.auth.model, http.auth.policy);
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    throw configError(err.file === http.auth.model ? 'http.auth.model' : 'http.auth.policy', err.message);
  }
  const readTls = (): TlsFiles | undefined => {
    const t = http.tls;
    if (t === undefined) return undefined;
    const read = (key: string, file: string): Buffer => {
      try {
        return fs.readFileSync(file);
      } catch (err) {
        throw configError(`http.tls.${key}`, `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
    };
    return {
      cert: read('cert', t.cert),
      key: read('key', t.key),
      ...(t.ca !== undefined ? { ca: read('ca', t.ca) } : {}),
      ...(t.crl !== undefined ? { crl: read('crl', t.crl) } : {}),
    };
  };
  readTls();
  return { tokens, authz, readTls };
}
