/**
 * IPv4 and IPv6 addresses and CIDR ranges, parsed once into bytes so a match is a byte
 * comparison. An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack listener
 * reports for an IPv4 client) is treated as the IPv4 address, so a ban or an exemption written
 * for `192.0.2.0/24` holds on every listener.
 *
 * @example
 * const range = parseCidr('2001:db8::/32');
 * range.ok && inRange(parseAddress('2001:db8::1')!, range.value); // true
 */
import net from 'node:net';

export interface Address {
  family: 4 | 6;
  bytes: Uint8Array;
}

export interface CidrRange extends Address {
  prefix: number;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

/** Parses an address; undefined when it is not a valid IPv4 or IPv6 address. Zone ids (`fe80::1%eth0`) are dropped. */
export function parseAddress(text: string): Address | undefined {
  const s = text.includes('%') ? text.slice(0, text.indexOf('%')) : text;
  const kind = net.isIP(s);
  if (kind === 4) return { family: 4, bytes: ipv4Bytes(s) };
  if (kind !== 6) return undefined;
  const bytes = ipv6Bytes(s);
  if (bytes === undefined) return undefined;
  if (isV4Mapped(bytes)) return { family: 4, bytes: bytes.slice(12) };
  return { family: 6, bytes };
}

/** The canonical text of an address: dotted IPv4 (also for IPv4-mapped IPv6), compressed lower-case IPv6. */
export function formatAddress(a: Address): string {
  if (a.family === 4) return Array.from(a.bytes).join('.');
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((a.bytes[i] as number) << 8) | (a.bytes[i + 1] as number));
  // The longest run of two or more zero groups becomes '::' (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** The text form of an address as the broker keys it; the input unchanged when it does not parse. */
export function normalizeAddress(text: string): string {
  return peerAddress(text).text;
}

/** Recently seen peer addresses, parsed: bounded, emptied whole when full. Treat the values as read-only. */
const recentPeers = new Map<string, { addr: Address | undefined; text: string }>();
const RECENT_PEERS = 4096;

/**
 * A peer's address as reported by the socket, parsed and in canonical text, remembered for the
 * next connection from the same address (a connect looks at it twice: admission and CONNECT).
 */
export function peerAddress(raw: string): { readonly addr: Address | undefined; readonly text: string } {
  let r = recentPeers.get(raw);
  if (r === undefined) {
    const addr = parseAddress(raw);
    r = { addr, text: addr === undefined ? raw : formatAddress(addr) };
    if (recentPeers.size >= RECENT_PEERS) recentPeers.clear();
    recentPeers.set(raw, r);
  }
  return r;
}

/**
 * Parses `address/prefix`. A bare address is a single-host range (/32 or /128). Host bits
 * must be zero: `10.0.0.5/8` is refused rather than silently widened to `10.0.0.0/8`.
 */
export function parseCidr(text: string): Parsed<CidrRange> {
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const a = parseAddress(addrText);
  if (a === undefined || addrText.includes('%')) return { ok: false, error: `'${text}' is not an IPv4 or IPv6 address or CIDR range` };
  const max = a.family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > (a.family === 4 && net.isIPv6(addrText) ? 128 : max)) {
      return { ok: false, error: `'${text}': the prefix length must be 0-${max}` };
    }
    prefix = Number(p);
    // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range /8.
    if (a.family === 4 && net.isIPv6(addrText)) {
      if (prefix < 96) return { ok: false, error: `'${text}': an IPv4-mapped range needs a prefix of at least 96` };
      prefix -= 96;
    }
  }
  const range: CidrRange = { ...a, prefix };
  if (!sameNetwork(a.bytes, masked(range).bytes, max)) {
    return { ok: false, error: `'${text}' has host bits set; did you mean ${formatAddress(masked(range))}/${prefix}?` };
  }
  return { ok: true, value: range };
}

export function formatCidr(r: CidrRange): string {
  return `${formatAddress(r)}/${r.prefix}`;
}

/** True when the address lies in the range (families must match; IPv4-mapped counts as IPv4). */
export function inRange(a: Address, r: CidrRange): boolean {
  if (a.family !== r.family) return false;
  const full = r.prefix >> 3;
  for (let i = 0; i < full; i++) if (a.bytes[i] !== r.bytes[i]) return false;
  const rest = r.prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (((a.bytes[full] as number) ^ (r.bytes[full] as number)) & mask) === 0;
}

/** The network of `a` with only the first `prefix` bits kept. */
export function masked(r: CidrRange): Address {
  const bytes = new Uint8Array(r.bytes.length);
  const full = r.prefix >> 3;
  for (let i = 0; i < full; i++) bytes[i] = r.bytes[i] as number;
  const rest = r.prefix & 7;
  if (rest > 0 && full < bytes.length) bytes[full] = (r.bytes[full] as number) & ((0xff << (8 - rest)) & 0xff);
  return { family: r.family, bytes };
}

/** A list of ranges; `find` returns the first that holds the address. */
export class RangeList {
  private readonly ranges: { range: CidrRange; text: string }[] = [];

  constructor(texts: readonly string[] = []) {
    for (const t of texts) {
      const r = parseCidr(t);
      if (!r.ok) throw new Error(r.error);
      this.ranges.push({ range: r.value, text: formatCidr(r.value) });
    }
  }

  get size(): number {
    return this.ranges.length;
  }

  find(a: Address | undefined): string | undefined {
    if (a === undefined) return undefined;
    for (const { range, text } of this.ranges) if (inRange(a, range)) return text;
    return undefined;
  }
}

function sameNetwork(a: Uint8Array, b: Uint8Array, bits: number): boolean {
  for (let i = 0; i < bits >> 3; i++) if (a[i] !== b[i]) return false;
  return true;
}

function ipv4Bytes(s: string): Uint8Array {
  return Uint8Array.from(s.split('.').map((p) => Number(p)));
}

function isV4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/** Expands an IPv6 text (already checked by net.isIPv6) to 16 bytes. */
function ipv6Bytes(s: string): Uint8Array | undefined {
  let text = s;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    tail.push(...ipv4Bytes(text.slice(lastColon + 1)));
    text = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [head = '', rest] = text.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = rest === undefined || rest === '' ? [] : rest.split(':');
  const fill = rest === undefined ? 0 : 8 - left.length - right.length;
  const groups = [...left, ...Array<string>(fill).fill('0'), ...right].map((g) => Number.parseInt(g, 16));
  if (groups.length !== 8 || groups.some((g) => !(g >= 0 && g <= 0xffff))) return undefined;
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[i * 2] = g >> 8;
    bytes[i * 2 + 1] = g & 0xff;
  });
  if (tail.length === 4) bytes.set(tail, 12);
  return bytes;
}
