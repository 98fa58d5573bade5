/**
 * Validates the Casbin model file as Casbin reads it. Casbin's reader (its `Config`) splits the
 * text on `\n`, cuts every line at the first `#` and then at the first `;`, trims it, joins lines
 * ending in `\` without a space, and lets a later key overwrite an earlier one. A validator
 * that reads the file any other way can be shown one model and let Casbin load another:
 * `m = true # && subjectMatch(...)` reads as `m = true`, which allows everything. So this file
 * reads it exactly that way, and only the documented model passes: every section, key and
 * value, token for token. The casbin adapter checks once more what Casbin itself loaded.
 */
import { PolicyError } from './policy-error.ts';
import { readableText } from './readable.ts';

/** The one model Portcullis accepts, as `section -> [key, value]`. */
export const MODEL: Readonly<Record<string, readonly [string, string]>> = {
  request_definition: ['r', 'sub, obj, act, qos, retain'],
  policy_definition: ['p', 'sub, obj, act, eft, qos, retain'],
  role_definition: ['g', '_, _'],
  policy_effect: ['e', 'some(where (p.eft == allow)) && !some(where (p.eft == deny))'],
  matchers: ['m', 'subjectMatch(r.sub, p.sub) && mqttMatch(r.sub, r.act, r.obj, p.sub, p.obj, p.act, p.eft) && conditionMatch(r.qos, r.retain, p.qos, p.retain)'],
};

/** The functions the matcher calls: registered by the engine. */
export const MATCHER_FUNCTIONS = ['subjectMatch', 'mqttMatch', 'conditionMatch'];

/** The canonical model text (what `policies/model.conf` says, without its comments). */
export function canonicalModelText(): string {
  return Object.entries(MODEL).map(([section, [key, value]]) => `[${section}]\n${key} = ${value}\n`).join('\n');
}

/** Tokens of an expression, whitespace dropped: `a(b, c)` and `a( b,c )` read the same, `ab` and `a b` do not. */
export function tokens(value: string): string[] {
  return value.match(/[A-Za-z_][A-Za-z0-9_]*|==|!=|&&|\|\||[^\sA-Za-z0-9_]|[0-9]+/g) ?? [];
}

interface Definition {
  section: string;
  key: string;
  value: string;
  /** The file line where the definition starts. */
  line: number;
  /** The file text of that line, when Casbin reads less or other than it shows. */
  shown?: string;
}

/** Reads the model the way casbin's Config.parseBuffer does, keeping file line numbers. */
function readAsCasbin(text: string, file: string): Definition[] {
  const raw = text.split('\n');
  // Casbin drops empty strings before it counts: its last line is the last non-empty one.
  const kept = raw.map((s, i) => ({ s, n: i + 1 })).filter((l) => l.s !== '');
  const defs: Definition[] = [];
  let section = '';
  let current = '';
  let start = 0;
  let shown: string | undefined;
  const write = (sec: string): void => {
    const eq = current.indexOf('=');
    if (eq === -1) throw new PolicyError(file, start, `expected 'key = value', got '${current}'${shown !== undefined ? ` (Casbin reads the line '${shown.trim()}' as '${current}')` : ''}`);
    const def: Definition = { section: sec === '' ? 'default' : sec, key: current.slice(0, eq).trim(), value: current.slice(eq + 1).trim(), line: start };
    if (shown !== undefined) def.shown = shown.trim();
    defs.push(def);
    current = '';
    shown = undefined;
  };
  kept.forEach(({ s, n }, index) => {
    let line = s;
    const hash = line.indexOf('#');
    if (hash > -1) line = line.slice(0, hash);
    const semi = line.indexOf(';');
    if (semi > -1) line = line.slice(0, semi);
    line = line.trim();
    if (line === '') return;
    const cut = line !== s.trim();
    if (line.startsWith('[') && line.endsWith(']')) {
      if (current.length !== 0) write(section);
      section = line.slice(1, -1);
      return;
    }
    if (current === '') start = n;
    if (cut) shown = (shown === undefined ? '' : `${shown} `) + s;
    if (line.endsWith('\\')) {
      current += line.slice(0, -1).trim();
      if (index === kept.length - 1) write(section);
    } else {
      current += line;
      write(section);
    }
  });
  return defs;
}

/** Validates the model text. Throws {@link PolicyError} naming the line. */
export function validateModel(text: string, file: string): void {
  const body = readableText(text, file);
  const sections = new Map<string, number>();
  for (const [i, line] of body.split('\n').entries()) {
    // Section headers as Casbin sees them (after comment stripping), to name unknown and repeated ones.
    const seen = line.replace(/[#;].*$/, '').trim();
    if (!(seen.startsWith('[') && seen.endsWith(']'))) continue;
    const name = seen.slice(1, -1);
    if (!Object.hasOwn(MODEL, name)) throw new PolicyError(file, i + 1, `unknown section [${name}] (expected one of ${Object.keys(MODEL).map((s) => `[${s}]`).join(', ')})`);
    if (sections.has(name)) throw new PolicyError(file, i + 1, `section [${name}] appears twice`);
    sections.set(name, i + 1);
  }
  const defined = new Set<string>();
  for (const def of readAsCasbin(body, file)) {
    const how = def.shown !== undefined ? ` (Casbin cuts a line at the first '#' or ';': it reads '${def.shown}' as '${def.key} = ${def.value}')` : '';
    if (def.section === 'default') throw new PolicyError(file, def.line, `a definition outside of any [section]${how}`);
    const spec = MODEL[def.section] as readonly [string, string];
    const [key, expected] = spec;
    if (def.key !== key) throw new PolicyError(file, def.line, `unknown key '${def.key}' in [${def.section}] (expected '${key}')${how}`);
    if (defined.has(def.section)) throw new PolicyError(file, def.line, `'${key}' is defined twice in [${def.section}] (Casbin would keep only the last)`);
    defined.add(def.section);
    if (tokens(def.value).join(' ') !== tokens(expected).join(' ')) {
      const what = def.section === 'matchers' ? 'the matcher must be exactly' : `[${def.section}] must be`;
      throw new PolicyError(file, def.line, `${what} '${key} = ${expected}', got '${key} = ${def.value}'${how}`);
    }
  }
  for (const [section, [key]] of Object.entries(MODEL)) {
    if (!defined.has(section)) throw new PolicyError(file, sections.get(section), `missing [${section}] with '${key} = ...'`);
  }
}
