/**
 * docs/configuration.md lists every key the configuration schema accepts, and no other. Its key
 * tables are marked `<!-- keys: PREFIX -->` (the prefix the table's keys are relative to; empty
 * for full paths); the keys are the backquoted names at the start of each row's first cell
 * (`a.b`, `.c` for a sibling of the one before, `[i]` for an index, `x.*` for all under x). The
 * schema's keys are found by walking the zod schema in src/config/schema.ts and its sub-schemas.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import YAML from 'yaml';
import type { z } from 'zod';
import { jwtProvider, moduleProvider, passwordProvider } from '../src/config/auth-schema.ts';
import { configSchema, parseConfig } from '../src/config/schema.ts';
import { certificateProvider, pskProvider } from '../src/config/tls-schema.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const doc = fs.readFileSync(path.join(root, 'docs', 'configuration.md'), 'utf8');

interface Def {
  type: string;
  shape?: Record<string, z.ZodType>;
  element?: z.ZodType;
  innerType?: z.ZodType;
  in?: z.ZodType;
  out?: z.ZodType;
  options?: z.ZodType[];
}
const defOf = (s: z.ZodType) => (s as unknown as { _zod: { def: Def } })._zod.def;

/**
 * A listener's `auth` entries go through a transform (a plain string or an object, routed to its
 * provider's schema), which cannot be walked: its provider schemas are walked instead.
 * `static-users` is not exported from schema.ts; its keys are listed here, and the test below
 * proves the schema accepts each of them and refuses others.
 */
const STATIC_USERS = ['users', 'users[].username', 'users[].password', 'users[].roles'];
const PROVIDERS = [certificateProvider, pskProvider, passwordProvider, jwtProvider, moduleProvider];

/** Every key path the schema accepts; `leaves` are those that hold a value rather than more keys. */
function schemaKeys(): { all: Set<string>; leaves: Set<string> } {
  const all = new Set<string>();
  const leaves = new Set<string>();
  const walk = (s: z.ZodType, at: string): void => {
    const def = defOf(s);
    switch (def.type) {
      case 'object':
        for (const [k, v] of Object.entries(def.shape ?? {})) {
          const key = at === '' ? k : `${at}.${k}`;
          all.add(key);
          walk(v, key);
        }
        return;
      case 'array':
        return walk(def.element as z.ZodType, `${at}[]`);
      case 'optional':
      case 'default':
      case 'prefault':
      case 'nullable':
      case 'readonly':
      case 'nonoptional':
        return walk(def.innerType as z.ZodType, at);
      case 'pipe': {
        if (defOf(def.in as z.ZodType).type === 'unknown' && defOf(def.out as z.ZodType).type === 'transform') {
          if (at !== 'listeners[].auth[]') throw new Error(`a transform at ${at} the test cannot walk`);
          for (const p of PROVIDERS) walk(p, at);
          for (const k of STATIC_USERS) all.add(`${at}.${k}`);
          return;
        }
        walk(def.in as z.ZodType, at);
        walk(def.out as z.ZodType, at);
        return;
      }
      case 'union':
        for (const o of def.options ?? []) walk(o, at);
        return;
      default:
        // A value: a string, a number, an enum, a literal, a record of free keys...
        // A list of values (`algorithms: [...]`) is one key.
        if (at !== '') leaves.add(at.replace(/(\[\])+$/, ''));
    }
  };
  walk(configSchema, '');
  for (const k of STATIC_USERS) if (!STATIC_USERS.some((o) => o.startsWith(`${k}[]`))) leaves.add(`listeners[].auth[].${k}`);
  // A key that holds more keys in one schema but a value in another (e.g. a union) stays a leaf only where it is one.
  for (const k of [...leaves]) if ([...all].some((o) => o.startsWith(`${k}.`) || o.startsWith(`${k}[].`))) leaves.delete(k);
  return { all, leaves };
}

/** The keys docs/configuration.md lists, with the line of each. */
function documentedKeys(): Map<string, number> {
  const keys = new Map<string, number>();
  const lines = doc.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const mark = /^\s*<!--\s*keys:\s*(\S*)\s*-->\s*$/.exec(lines[i] as string);
    if (mark === null) continue;
    const prefix = mark[1] ?? '';
    let j = i + 1;
    for (; j < lines.length && (lines[j] as string).trim().startsWith('|'); j++) {
      if (j < i + 3) continue; // the header row and the separator
      const cell = (lines[j] as string).trim().split('|')[1] ?? '';
      let previous: string | undefined;
      for (const m of cell.matchAll(/`([^`]+)`/g)) {
        let key = (m[1] as string).replace(/\[[a-z0-9]\]/g, '[]');
        if (key.startsWith('.')) {
          if (previous === undefined) throw new Error(`configuration.md:${j + 1}: ${key} with no key before it`);
          key = previous.slice(0, previous.lastIndexOf('.')) + key;
        } else key = prefix === '' ? key : `${prefix}.${key}`;
        keys.set(key, j + 1);
        previous = key;
      }
    }
    if (j === i + 1) throw new Error(`configuration.md:${i + 1}: a keys mark with no table after it`);
  }
  return keys;
}

test('every key docs/configuration.md lists is one the schema accepts', (t) => {
  const { all } = schemaKeys();
  const documented = documentedKeys();
  t.true(documented.size > 150, `${documented.size} keys found in the key tables`);
  for (const [key, line] of documented) {
    if (key.endsWith('.*')) {
      const base = key.slice(0, -2);
      t.true([...all].some((k) => k.startsWith(`${base}.`)), `configuration.md:${line}: ${key}: nothing under ${base} in the schema`);
      continue;
    }
    t.true(all.has(key), `configuration.md:${line}: \`${key}\` is not a key the schema accepts`);
  }
});

test('docs/configuration.md lists every key the schema accepts', (t) => {
  const { leaves } = schemaKeys();
  const documented = [...documentedKeys().keys()];
  t.true(leaves.size > 150, `${leaves.size} keys found in the schema`);
  for (const key of leaves) {
    const covered = documented.some((d) => d === key || (d.endsWith('.*') && key.startsWith(d.slice(0, -1))));
    t.true(covered, `\`${key}\` is accepted by the schema but not listed in docs/configuration.md`);
  }
});

test('the static-users keys the walk cannot see are exactly what the schema accepts', (t) => {
  const listener = (user: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({ listeners: [{ type: 'tcp', auth: [{ provider: 'static-users', users: [user], ...extra }] }] });
  t.notThrows(() => parseConfig(listener({ username: 'a', password: 'b', roles: ['r'] })));
  t.throws(() => parseConfig(listener({ username: 'a', password: 'b', colour: 'red' })), { message: /Unrecognized key: "colour"/ });
  t.throws(() => parseConfig(listener({ username: 'a', password: 'b' }, { colour: 'red' })), { message: /Unrecognized key: "colour"/ });
});

test('the configuration shown "with every key at its schema default" is what an empty file means', (t) => {
  const start = doc.indexOf('## A configuration with every key at its schema default');
  const block = /```yaml\n([\s\S]*?)```/.exec(doc.slice(start));
  t.truthy(block, 'the section has a yaml block');
  const shown = parseConfig(YAML.parse(block?.[1] ?? ''));
  t.deepEqual(shown, parseConfig({}));
});
