/**
 * The `Host` header check of the operations listener, against DNS rebinding: a hostile page at
 * `http://evil.example:9234/` whose name is then re-pointed at 127.0.0.1 makes the operator's
 * browser send requests to the listener as a same-origin page, able to read the answers. Such a
 * request names the attacker's host in `Host`, so only these hosts are accepted:
 *
 * - `localhost`, the listener's bind address (`http.host`) and every name in `http.allowedHosts`;
 * - any IP literal (`127.0.0.1`, `[::1]`, a pod's address from a Kubernetes probe): a page whose
 *   origin is an IP address is served by that address itself, with no name to re-point, so an
 *   IP literal cannot carry a rebinding attack;
 * - no `Host` at all (HTTP/1.0 tools): every browser sends one.
 *
 * The port in the header is not compared (a proxy or a port mapping changes it).
 */
import net from 'node:net';

export class HostCheck {
  private readonly names: ReadonlySet<string>;

  constructor(bindHost: string, allowedHosts: readonly string[]) {
    this.names = new Set(['localhost', normalise(bindHost), ...allowedHosts.map(normalise)]);
  }

  /** The host name of the header when it is not accepted; undefined when it is. */
  refused(header: string | undefined): string | undefined {
    if (header === undefined) return undefined;
    const name = hostName(header);
    if (name !== undefined && (this.names.has(name) || net.isIP(name) !== 0)) return undefined;
    return header.slice(0, 100);
  }
}

function normalise(host: string): string {
  const h = host.toLowerCase();
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

/** `name[:port]` or `[v6]:port` → the name (IPv6 without brackets); undefined when malformed. */
function hostName(header: string): string | undefined {
  const h = header.trim();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    if (end < 0) return undefined;
    const rest = h.slice(end + 1);
    if (rest !== '' && !/^:\d{1,5}$/.test(rest)) return undefined;
    return h.slice(1, end).toLowerCase();
  }
  const m = /^([^:]+)(?::\d{1,5})?$/.exec(h);
  if (m === null) return undefined;
  return normalise(m[1] as string);
}
