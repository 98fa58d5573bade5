/**
 * docs/mqtt-support.md is the page users read first: every listener type and authentication
 * method that the configuration schema accepts must have a row there, and none may be marked
 * "No". The lists come from the schema itself, so a new listener type or provider fails this
 * test until the table has its row.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { configSchema, parseConfig } from '../src/config/schema.ts';
import { root } from './auth-support.ts';

const table = fs.readFileSync(path.join(root, 'docs', 'mqtt-support.md'), 'utf8');

/** Every table row as [first cell, status cell], with the section it is in. */
const rows = (() => {
  let section = '';
  const out: { section: string; feature: string; status: string }[] = [];
  for (const line of table.split('\n')) {
    if (line.startsWith('## ')) section = line.slice(3).trim();
    const cells = line.split('|').map((c) => c.trim());
    if (line.startsWith('|') && cells.length >= 4 && !/^-+$/.test(cells[1] ?? '')) out.push({ section, feature: cells[1] as string, status: cells[2] as string });
  }
  return out;
})();

/** The `type` literals of the listener union, read from the schema. */
function listenerTypes(): string[] {
  type Node = { def?: Record<string, unknown>; _zod?: { def: Record<string, unknown> } };
  const def = (n: unknown) => ((n as Node)._zod?.def ?? (n as Node).def) as Record<string, unknown>;
  let node: unknown = configSchema.shape.listeners;
  // default → array → discriminated union
  while (def(node).type !== 'union') node = def(node).innerType ?? def(node).element;
  return (def(node).options as unknown[]).map((o) => {
    const shape = def(o).shape as Record<string, unknown>;
    return (def(shape.type).values as unknown[])[0] as string;
  });
}

/**
 * Provider names, from the schema's own error message for an unknown provider, checked against
 * the `provider: z.literal(...)` declarations in src/config/, so a provider added to the schema
 * but not to that message is caught too.
 */
function providerNames(): string[] {
  let message = '';
  try {
    parseConfig({ listeners: [{ type: 'tcp', auth: ['no-such-provider'] }] });
  } catch (err) {
    message = (err as Error).message;
  }
  const named = new Set([...message.matchAll(/'([a-z][a-z-]*)'/g)].map((m) => m[1] as string).filter((n) => n !== 'no-such-provider'));
  const dir = path.join(root, 'src', 'config');
  const declared = new Set<string>();
  for (const f of fs.readdirSync(dir)) {
    for (const m of fs.readFileSync(path.join(dir, f), 'utf8').matchAll(/provider: z\.literal\('([a-z][a-z-]*)'\)/g)) declared.add(m[1] as string);
  }
  for (const d of declared) if (!named.has(d)) throw new Error(`provider '${d}' is declared in src/config but missing from the unknown-provider message`);
  return [...named];
}

test('the schema lists the listener types and providers this test checks', (t) => {
  t.deepEqual(listenerTypes().sort(), ['tcp', 'tls', 'ws', 'wss']);
  t.true(providerNames().length >= 7, providerNames().join(', '));
});

test('every listener type the schema accepts has a row in docs/mqtt-support.md, and none is marked No', (t) => {
  for (const type of listenerTypes()) {
    const mine = rows.filter((r) => r.feature.includes(`\`type: ${type}\``));
    t.true(mine.length > 0, `no row names \`type: ${type}\``);
    for (const r of mine) t.not(r.status, 'No', `${r.feature} is marked No`);
  }
});

test('every authentication provider the schema accepts, and v5 enhanced authentication and re-authentication, have a row not marked No', (t) => {
  const auth = rows.filter((r) => r.section === 'Authentication');
  for (const name of providerNames()) {
    const row = auth.find((r) => r.feature === `\`${name}\``);
    t.truthy(row, `no row for the \`${name}\` provider in the Authentication section`);
    t.not(row?.status, 'No', `\`${name}\` is marked No`);
  }
  // The jwt provider offers an MQTT 5 authentication method: enhanced authentication and re-authentication exist.
  t.is(parseConfig({ listeners: [{ type: 'tcp', auth: [{ provider: 'jwt', algorithms: ['RS256'], issuer: 'i', audience: 'a', keyFiles: ['k.pem'] }] }] }).listeners[0]?.auth[0]?.provider, 'jwt');
  for (const feature of ['Enhanced authentication (v5 AUTH)', 'Re-authentication (v5 AUTH 0x19)']) {
    const mine = rows.filter((r) => r.feature === feature);
    t.true(mine.length > 0, `no row "${feature}"`);
    for (const r of mine) t.not(r.status, 'No', `${feature} is marked No`);
  }
});

test('no row of the table says a feature is "not available yet" while marked Yes or Partial, or the reverse', (t) => {
  for (const r of rows) {
    const line = table.split('\n').find((l) => l.includes(`| ${r.feature} |`)) ?? '';
    if (r.status === 'Yes' || r.status === 'Partial') t.false(/not available yet/i.test(line), r.feature);
  }
});
