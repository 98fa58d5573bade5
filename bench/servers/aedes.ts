/**
 * Aedes (in-memory persistence, default options) for the benchmark on three listeners: plain TCP,
 * TLS and mTLS (Node `tls.createServer` with requestCert + rejectUnauthorized).
 *
 * Security on: Aedes has no password file or ACL of its own, so its hooks get the equivalent the
 * other brokers have: `authenticate` checks salted SHA-256 passwords (constant-time compare; far
 * cheaper than argon2id or Mosquitto's PBKDF2, say so when reading the numbers), or takes the
 * client certificate's CN as the user on the mTLS listener; `authorizePublish` and
 * `authorizeSubscribe` check the same 1,000 rules as the others, indexed by user.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { Aedes, type AedesOptions } from 'aedes';
import { serve, serverConfig } from './args.mjs';

interface AedesBenchConfig {
  security: 'off' | 'on';
  host: string;
  ca: string;
  cert: string;
  key: string;
  securityFile: string;
}
interface Rule {
  user: string;
  filter: string;
  access: 'publish' | 'read' | 'readwrite';
}

const config = serverConfig<AedesBenchConfig>();

/** Does `filter` match the topic name `topic`? (`$` topics are not matched by a leading wildcard.) */
function matches(filter: string[], topic: string[]): boolean {
  if (topic[0]?.startsWith('$') && (filter[0] === '+' || filter[0] === '#')) return false;
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]!;
    if (f === '#') return true;
    if (i >= topic.length) return false;
    if (f !== '+' && f !== topic[i]) return false;
  }
  return filter.length === topic.length;
}

/** Does the allowed filter cover every topic the requested filter can match? */
function covers(allowed: string[], requested: string[]): boolean {
  for (let i = 0; i < allowed.length; i++) {
    const a = allowed[i]!;
    if (a === '#') return true;
    const r = requested[i];
    if (r === undefined || r === '#') return false;
    if (a === '+') continue;
    if (r === '+' || r !== a) return false;
  }
  return allowed.length === requested.length;
}

function securityHooks(): Partial<AedesOptions> {
  const file = JSON.parse(readFileSync(config.securityFile, 'utf8')) as { users: Record<string, { salt: string; sha256: string }>; rules: Rule[] };
  const users = new Map(Object.entries(file.users).map(([u, v]) => [u, { salt: v.salt, hash: Buffer.from(v.sha256, 'hex') }]));
  const byUser = new Map<string, { filter: string[]; publish: boolean; read: boolean }[]>();
  for (const r of file.rules) {
    const list = byUser.get(r.user) ?? [];
    list.push({ filter: r.filter.split('/'), publish: r.access !== 'read', read: r.access !== 'publish' });
    byUser.set(r.user, list);
  }
  const who = new WeakMap<object, string>();
  const denied = (code: number): Error & { returnCode: number } => Object.assign(new Error('not authorized'), { returnCode: code });
  return {
    authenticate: (client, username, password, done) => {
      const conn = client.conn as unknown;
      if (conn instanceof tls.TLSSocket && conn.authorized) {
        const cn = conn.getPeerCertificate().subject?.CN;
        if (typeof cn === 'string' && cn !== '') {
          who.set(client, cn);
          return done(null, true);
        }
      }
      const u = username === undefined ? undefined : users.get(username);
      if (u === undefined || password === undefined) return done(denied(4) as never, false);
      const h = createHash('sha256').update(u.salt).update(password).digest();
      if (!timingSafeEqual(h, u.hash)) return done(denied(4) as never, false);
      who.set(client, username!);
      done(null, true);
    },
    authorizePublish: (client, packet, callback) => {
      const user = client === null ? undefined : who.get(client);
      const topic = packet.topic.split('/');
      if (user !== undefined && byUser.get(user)?.some((r) => r.publish && matches(r.filter, topic))) return callback(null);
      callback(new Error('publish not authorized'));
    },
    authorizeSubscribe: (client, sub, callback) => {
      const user = who.get(client);
      const filter = sub.topic.split('/');
      if (user !== undefined && byUser.get(user)?.some((r) => r.read && covers(r.filter, filter))) return callback(null, sub);
      callback(null, null);
    },
  };
}

const aedes = await Aedes.createBroker(config.security === 'on' ? securityHooks() : {});
const tlsFiles = { cert: readFileSync(config.cert), key: readFileSync(config.key), minVersion: 'TLSv1.2' as const };
const servers = {
  tcp: net.createServer(aedes.handle),
  tls: tls.createServer(tlsFiles, aedes.handle),
  mtls: tls.createServer({ ...tlsFiles, ca: readFileSync(config.ca), requestCert: true, rejectUnauthorized: true }, aedes.handle),
};
const listen = (s: net.Server): Promise<number> =>
  new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(0, config.host, () => resolve((s.address() as net.AddressInfo).port));
  });
serve({ tcp: await listen(servers.tcp), tls: await listen(servers.tls), mtls: await listen(servers.mtls) }, async () => {
  await Promise.all(Object.values(servers).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  await new Promise<void>((resolve) => aedes.close(() => resolve()));
});
