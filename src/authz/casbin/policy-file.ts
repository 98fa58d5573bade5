/**
 * Reads and validates the Casbin model and policy files line by line. Casbin itself accepts
 * missing and extra fields and misspelled effects without a word, so nothing reaches it that
 * has not passed here. Any error refuses the whole file and names the file and line.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { checkTopicFilter } from '../../protocol/topic.ts';
import { POLICY_ACTIONS, parsePolicyShared, placeholderInDollarRoot, unknownPlaceholders, usesClientId, type Effect } from './matcher.ts';
import { validateModel } from './model-file.ts';
import { PolicyError } from './policy-error.ts';
import { readableText } from './readable.ts';

export { PolicyError } from './policy-error.ts';
export { validateModel } from './model-file.ts';

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

// ── policy ───────────────────────────────────────────────────────────────────

const SUBJECT = /^(\*|(user|client|role):[^\s,"]+)$/;
const QOS_CONDITIONS = new Set(['*', '0', '1', '2', '0-1', '0-2', '1-2']);
const RETAIN_CONDITIONS = new Set(['*', 'true', 'false']);
/** Policy filters are checked with generous bounds: the broker's own limits apply to clients. */
const POLICY_LIMITS = { maxTopicLength: 65535, maxTopicLevels: 1024 };

function checkPolicyFilter(obj: string, file: string, n: number): void {
  const bad = unknownPlaceholders(obj);
  if (bad.length > 0) throw new PolicyError(file, n, `unknown placeholder ${bad[0]} in '${obj}' (known: %u %c %r %{cert.cn} %{cert.san.uri} %{jwt.<claim>})`);
  if (placeholderInDollarRoot(obj)) throw new PolicyError(file, n, `a placeholder in the first level of '${obj}': its value would choose a reserved tree ($SYS, $share, ...); write the first level out`);
  const plain = obj.replace(/%(?:[ucr]|\{[^}]*\})/g, 'x');
  const shared = parsePolicyShared(plain);
  if (shared !== null && 'error' in shared) throw new PolicyError(file, n, `invalid shared filter '${obj}': ${shared.error}`);
  const check = checkTopicFilter(shared === null ? plain : shared.filter, POLICY_LIMITS);
  if (!check.ok) throw new PolicyError(file, n, `invalid topic filter '${obj}': ${check.detail}`);
}

/** A warning for a subject holding characters outside ASCII: a lookalike (Cyrillic `а` for `a`) names someone else. */
function lookalikeWarning(subject: string, source: string): string | undefined {
  for (const ch of subject) {
    const cp = ch.codePointAt(0) as number;
    if (cp > 0x7e) return `${source}: subject '${subject}' holds '${ch}' (U+${cp.toString(16).toUpperCase().padStart(4, '0')}), which is not ASCII: check that it names who you mean (a lookalike names someone else)`;
  }
  return undefined;
}

/** Validates policy text. Throws {@link PolicyError} at the first bad line. */
export function parsePolicy(text: string, file: string): { rules: PolicyRule[]; links: RoleLink[]; warnings: string[] } {
  const rules: PolicyRule[] = [];
  const links: RoleLink[] = [];
  const warnings: string[] = [];
  // Only LF and CRLF end a line: anything else an editor would show as a break is refused here.
  const lines = readableText(text, file).split(/\r?\n/);
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
      const warning = lookalikeWarning(sub, source);
      if (warning !== undefined) warnings.push(warning);
      rules.push({ sub, obj, act, eft, qos, retain, source });
    } else if (kind === 'g') {
      if (fields.length !== 3) throw new PolicyError(file, n, `${fields.length < 3 ? 'missing field' : 'too many fields'}: expected 'g, member, role:NAME'`);
      const [, member, role] = fields as [string, string, string];
      if (!SUBJECT.test(member) || member === '*') throw new PolicyError(file, n, `unknown member '${member}' (expected user:NAME, client:ID or role:NAME)`);
      if (!role.startsWith('role:') || !SUBJECT.test(role)) throw new PolicyError(file, n, `'${role}' is not a role (expected role:NAME)`);
      for (const s of [member, role]) {
        const warning = lookalikeWarning(s, source);
        if (warning !== undefined) warnings.push(warning);
      }
      links.push({ member, role, source });
    } else if (/^[pg]\s/.test(kind as string)) {
      throw new PolicyError(file, n, 'syntax error: fields must be separated by commas');
    } else {
      throw new PolicyError(file, n, `unknown line type '${kind}' (expected p or g)`);
    }
  }
  return { rules, links, warnings };
}

/** A policy line whose meaning depends on the client id: only as trustworthy as the listener's binding of client ids. */
export interface ClientIdLine {
  source: string;
  /** What in the line names the client id. */
  what: string;
}

/** Every `client:` subject, `g, client:...` line and `%c` placeholder, in file order. */
export function clientIdLines(set: Pick<PolicySet, 'rules' | 'links'>): ClientIdLine[] {
  const out: { source: string; what: string; order: number }[] = [];
  const order = (source: string): number => Number(source.slice(source.lastIndexOf(':') + 1));
  for (const r of set.rules) {
    if (r.sub.startsWith('client:')) out.push({ source: r.source, what: `the subject '${r.sub}'`, order: order(r.source) });
    else if (usesClientId(r.obj)) out.push({ source: r.source, what: `%c in '${r.obj}'`, order: order(r.source) });
  }
  for (const l of set.links) if (l.member.startsWith('client:')) out.push({ source: l.source, what: `the member '${l.member}'`, order: order(l.source) });
  return out.sort((a, b) => a.order - b.order).map(({ source, what }) => ({ source, what }));
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
  const { rules, links, warnings: lineWarnings } = parsePolicy(policyText, policyFile);
  warnings.push(...lineWarnings);
  if (rules.length === 0 && !warnings.some((w) => w.endsWith('every action is denied'))) warnings.push(`${policyFile}: the policy has no 'p' lines: every action is denied`);
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
