/**
 * Reads and validates the Casbin model and policy files line by line. Casbin itself accepts
 * missing and extra fields and misspelled effects without a word, so nothing reaches it that
 * has not passed here. Any error refuses the whole file and names the file and line.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { checkTopicFilter } from '../../protocol/topic.ts';
import { POLICY_ACTIONS, parsePolicyShared, unknownPlaceholders, type Effect } from './matcher.ts';

/** A validated `p` line. */
export interface PolicyRule {
  sub: string;
  obj: string;
  act: string;
  eft: Effect;
  qos: string;
  retain: string;
  /** `file:line`, for explain and audit. */
  source: string;
}

/** A validated `g` line: `member` has role `role` (both with their prefixes). */
export interface RoleLink {
  member: string;
  role: string;
  source: string;
}

export interface PolicySet {
  modelText: string;
  rules: PolicyRule[];
  links: RoleLink[];
  /** sha256 over the model and policy text, shortened: the policy version in audit records. */
  version: string;
  warnings: string[];
}

/** A model or policy file that cannot be used. `code` is stable; `file` and `line` say where. */
export class PolicyError extends Error {
  readonly code = 'ERR_PORTCULLIS_POLICY';
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    readonly problem: string,
  ) {
    super(line === undefined ? `${file}: ${problem}` : `${file}:${line}: ${problem}`);
  }
}

// ── model ────────────────────────────────────────────────────────────────────

const MODEL_SECTIONS: Record<string, { key: string; expect?: string }> = {
  request_definition: { key: 'r', expect: 'sub, obj, act, qos, retain' },
  policy_definition: { key: 'p', expect: 'sub, obj, act, eft, qos, retain' },
  role_definition: { key: 'g', expect: '_, _' },
  policy_effect: { key: 'e', expect: 'some(where (p.eft == allow)) && !some(where (p.eft == deny))' },
  matchers: { key: 'm' },
};
const REQUEST_FIELDS = ['sub', 'obj', 'act', 'qos', 'retain'];
const POLICY_FIELDS = ['sub', 'obj', 'act', 'eft', 'qos', 'retain'];
/** The functions the matcher may call: registered by the engine. */
export const MATCHER_FUNCTIONS = ['subjectMatch', 'mqttMatch', 'conditionMatch'];

const normalize = (s: string): string => s.replace(/\s+/g, ' ').replace(/\s*,\s*/g, ', ').trim();

/** Validates the model text. Throws {@link PolicyError} naming the line. */
export function validateModel(text: string, file: string): void {
  const seen = new Map<string, number>();
  let section: string | null = null;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    let line = (lines[i] as string).trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([^\]]*)\]$/.exec(line);
    if (header !== null) {
      section = header[1] as string;
      if (!(section in MODEL_SECTIONS)) throw new PolicyError(file, n, `unknown section [${section}] (expected one of ${Object.keys(MODEL_SECTIONS).map((s) => `[${s}]`).join(', ')})`);
      if (seen.has(section)) throw new PolicyError(file, n, `section [${section}] appears twice`);
      seen.set(section, n);
      continue;
    }
    if (section === null) throw new PolicyError(file, n, 'a definition outside of any [section]');
    while (line.endsWith('\\') && i + 1 < lines.length) line = line.slice(0, -1) + ' ' + (lines[++i] as string).trim();
    const eq = line.indexOf('=');
    if (eq <= 0) throw new PolicyError(file, n, `expected 'key = value', got '${line}'`);
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    const spec = MODEL_SECTIONS[section] as { key: string; expect?: string };
    if (key !== spec.key) throw new PolicyError(file, n, `unknown key '${key}' in [${section}] (expected '${spec.key}')`);
    if (spec.expect !== undefined && normalize(value) !== normalize(spec.expect)) {
      throw new PolicyError(file, n, `[${section}] must be '${spec.key} = ${spec.expect}', got '${value}'`);
    }
    if (section === 'matchers') validateMatcher(value, file, n);
    if (seen.has(`${section}.${key}`)) throw new PolicyError(file, n, `'${key}' is defined twice`);
    seen.set(`${section}.${key}`, n);
  }
  for (const [s, spec] of Object.entries(MODEL_SECTIONS)) {
    if (!seen.has(`${s}.${spec.key}`)) throw new PolicyError(file, undefined, `missing [${s}] with '${spec.key} = ...'`);
  }
}

function validateMatcher(expr: string, file: string, line: number): void {
  const withoutStrings = expr.replace(/"[^"]*"|'[^']*'/g, '""');
  for (const m of withoutStrings.matchAll(/\b([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\s*(\()?/g)) {
    const [, head, field, call] = m;
    if (field !== undefined) {
      const fields = head === 'r' ? REQUEST_FIELDS : head === 'p' ? POLICY_FIELDS : null;
      if (fields === null) throw new PolicyError(file, line, `matcher uses unknown value '${head}.${field}'`);
      if (!fields.includes(field)) throw new PolicyError(file, line, `matcher uses '${head}.${field}', which is not a ${head === 'r' ? 'request' : 'policy'} field`);
    } else if (call !== undefined) {
      if (!MATCHER_FUNCTIONS.includes(head as string) && head !== 'g') throw new PolicyError(file, line, `matcher calls unknown function '${head}'`);
    } else if (!['true', 'false'].includes(head as string)) {
      throw new PolicyError(file, line, `matcher uses unknown name '${head}'`);
    }
  }
  for (const required of ['subjectMatch', 'mqttMatch']) {
    if (!new RegExp(`\\b${required}\\s*\\(`).test(withoutStrings)) throw new PolicyError(file, line, `matcher must call ${required}(...)`);
  }
}

// ── policy ───────────────────────────────────────────────────────────────────

const SUBJECT = /^(\*|(user|client|role):[^\s,"]+)$/;
const QOS_CONDITIONS = new Set(['*', '0', '1', '2', '0-1', '0-2', '1-2']);
const RETAIN_CONDITIONS = new Set(['*', 'true', 'false']);
/** Policy filters are checked with generous bounds: the broker's own limits apply to clients. */
const POLICY_LIMITS = { maxTopicLength: 65535, maxTopicLevels: 1024 };

function checkPolicyFilter(obj: string, file: string, n: number): void {
  const bad = unknownPlaceholders(obj);
  if (bad.length > 0) throw new PolicyError(file, n, `unknown placeholder ${bad[0]} in '${obj}' (known: %u %c %r %{cert.cn} %{cert.san.uri} %{jwt.<claim>})`);
  const plain = obj.replace(/%(?:[ucr]|\{[^}]*\})/g, 'x');
  const shared = parsePolicyShared(plain);
  if (shared !== null && 'error' in shared) throw new PolicyError(file, n, `invalid shared filter '${obj}': ${shared.error}`);
  const check = checkTopicFilter(shared === null ? plain : shared.filter, POLICY_LIMITS);
  if (!check.ok) throw new PolicyError(file, n, `invalid topic filter '${obj}': ${check.detail}`);
}

/** Validates policy text. Throws {@link PolicyError} at the first bad line. */
export function parsePolicy(text: string, file: string): { rules: PolicyRule[]; links: RoleLink[] } {
  const rules: PolicyRule[] = [];
  const links: RoleLink[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const line = (lines[i] as string).trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.includes('"')) throw new PolicyError(file, n, 'quoted fields are not supported');
    const fields = line.split(',').map((f) => f.trim());
    const kind = fields[0];
    const source = `${file}:${n}`;
    if (fields.some((f) => f === '')) throw new PolicyError(file, n, 'empty field');
    if (kind === 'p') {
      if (fields.length !== 5 && fields.length !== 7) {
        const what = fields.length < 5 ? 'missing field' : fields.length === 6 ? 'a QoS condition needs a retain condition too' : 'too many fields';
        throw new PolicyError(file, n, `${what}: expected 'p, subject, filter, action, effect[, qos, retain]', got ${fields.length - 1} fields`);
      }
      const [, sub, obj, act, eft, qos = '*', retain = '*'] = fields as [string, string, string, string, string, string?, string?];
      if (!SUBJECT.test(sub)) throw new PolicyError(file, n, `unknown subject '${sub}' (expected user:NAME, client:ID, role:NAME or *)`);
      checkPolicyFilter(obj, file, n);
      if (!(POLICY_ACTIONS as readonly string[]).includes(act)) throw new PolicyError(file, n, `unknown action '${act}' (expected ${POLICY_ACTIONS.join(', ')})`);
      if (eft !== 'allow' && eft !== 'deny') throw new PolicyError(file, n, `unknown effect '${eft}' (expected allow or deny)`);
      if (!QOS_CONDITIONS.has(qos)) throw new PolicyError(file, n, `invalid QoS condition '${qos}' (expected *, 0, 1, 2, 0-1, 0-2 or 1-2)`);
      if (!RETAIN_CONDITIONS.has(retain)) throw new PolicyError(file, n, `invalid retain condition '${retain}' (expected *, true or false)`);
      rules.push({ sub, obj, act, eft, qos, retain, source });
    } else if (kind === 'g') {
      if (fields.length !== 3) throw new PolicyError(file, n, `${fields.length < 3 ? 'missing field' : 'too many fields'}: expected 'g, member, role:NAME'`);
      const [, member, role] = fields as [string, string, string];
      if (!SUBJECT.test(member) || member === '*') throw new PolicyError(file, n, `unknown member '${member}' (expected user:NAME, client:ID or role:NAME)`);
      if (!role.startsWith('role:') || !SUBJECT.test(role)) throw new PolicyError(file, n, `'${role}' is not a role (expected role:NAME)`);
      links.push({ member, role, source });
    } else if (/^[pg]\s/.test(kind as string)) {
      throw new PolicyError(file, n, 'syntax error: fields must be separated by commas');
    } else {
      throw new PolicyError(file, n, `unknown line type '${kind}' (expected p or g)`);
    }
  }
  return { rules, links };
}

/**
 * Reads and validates a model and a policy file. A missing or empty policy is not an error: it
 * denies everything, and says so in `warnings`. A missing or bad model is an error.
 */
export function loadPolicySet(modelFile: string, policyFile: string, options: { requirePolicy?: boolean } = {}): PolicySet {
  const modelText = readText(modelFile);
  validateModel(modelText, modelFile);
  const warnings: string[] = [];
  let policyText = '';
  try {
    policyText = fs.readFileSync(policyFile, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
    if (options.requirePolicy === true || code !== 'ENOENT') throw new PolicyError(policyFile, undefined, `cannot read the policy file (${code})`);
    warnings.push(`${policyFile}: no policy file: every action is denied`);
  }
  const { rules, links } = parsePolicy(policyText, policyFile);
  if (rules.length === 0 && warnings.length === 0) warnings.push(`${policyFile}: the policy has no 'p' lines: every action is denied`);
  const version = createHash('sha256').update(modelText).update('\0').update(policyText).digest('hex').slice(0, 16);
  return { modelText, rules, links, version, warnings };
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new PolicyError(file, undefined, `cannot read the model file (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
}
