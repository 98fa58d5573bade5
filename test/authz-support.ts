/** A Casbin broker for the authorization tests, with the settings each test needs, stopped at teardown. */
import type { MqttClient } from 'mqtt';
import type { Authenticator, Principal } from '../src/auth/types.ts';
import type { ConfigInput } from '../src/index.ts';
import { startBroker, writePolicyDir, type TestBroker } from './helpers.ts';

export interface CasbinBrokerOptions {
  /** Static users (password = name + '-pw'). */
  users?: { username: string; roles?: string[] }[];
  /** The listener's identity rules (client id binding). */
  identity?: { clientIdBinding?: 'none' | 'equals' | 'prefix'; bindTo?: 'username' | 'cert-cn'; refuseWildcards?: boolean };
  /** More casbin authorizer settings. */
  casbin?: Record<string, unknown>;
  /** Providers asked after the static users. */
  authenticators?: Authenticator[];
  /** Seconds between $SYS publications (0: none). */
  sysInterval?: number;
  /** Replaces the shipped model. */
  model?: string;
}

export async function casbinBroker(t: { teardown(fn: () => unknown): void }, policy: string, o: CasbinBrokerOptions = {}): Promise<TestBroker & { files: ReturnType<typeof writePolicyDir> }> {
  const files = writePolicyDir(policy);
  t.teardown(files.cleanup);
  if (o.model !== undefined) {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(files.model, o.model);
  }
  const users = (o.users ?? []).map((u) => ({ username: u.username, password: `${u.username}-pw`, roles: u.roles ?? [] }));
  const config: Partial<ConfigInput> = {
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: users.length > 0 ? [{ provider: 'static-users', users }] : [], ...(o.identity !== undefined ? { identity: o.identity } : {}) }],
    authorizers: [{ type: 'casbin', model: files.model, policy: files.policy, watch: false, ...(o.casbin ?? {}) } as never],
    sys: { intervalSeconds: o.sysInterval ?? 0 },
  };
  const b = await startBroker(config, o.authenticators !== undefined ? { authenticators: { test: o.authenticators } } : {});
  t.teardown(() => b.stop());
  return { ...b, files };
}

/** A provider that allows one user name with the principal given (for attributes no real provider sets here). */
export function fakeProvider(username: string, make: (clientId: string) => Omit<Principal, 'clientId' | 'method' | 'provider'>): Authenticator {
  return {
    id: `fake-${username}`,
    async authenticate(req) {
      if (req.username !== username) return { kind: 'abstain' };
      return { kind: 'allow', value: { clientId: req.clientId, method: 'test', provider: `fake-${username}`, ...make(req.clientId) } };
    },
  };
}

/** SUBACK codes for each filter, whether mqtt.js calls it a failure or not. */
export async function subscribeCodes(client: MqttClient, filters: string[], qos: 0 | 1 | 2 = 0): Promise<number[]> {
  const map = Object.fromEntries(filters.map((f) => [f, { qos }]));
  try {
    return (await client.subscribeAsync(map)).map((g) => g.qos);
  } catch (err) {
    const granted = (err as { packet?: { granted?: number[] } }).packet?.granted;
    if (granted === undefined) throw err;
    return granted;
  }
}

/** The PUBACK reason code of a QoS 1 publish (v5), or the error code. */
export function pubackCode(c: MqttClient, topic: string, payload = 'x', opts: { retain?: boolean } = {}): Promise<number> {
  return new Promise((resolve) =>
    c.publish(topic, payload, { qos: 1, retain: opts.retain ?? false }, (err, packet) =>
      resolve(err ? ((err as Error & { code?: number }).code ?? -1) : ((packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0)),
    ),
  );
}

/** Connects; resolves with the CONNACK refusal code instead of throwing. */
export async function connectCode(connectFn: () => Promise<MqttClient>): Promise<MqttClient | number> {
  try {
    return await connectFn();
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
}
