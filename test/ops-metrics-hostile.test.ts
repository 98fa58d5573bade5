/**
 * The hand-written Prometheus text (metrics/prom.ts): with hostile listener names (the
 * configuration's free text that reaches labels) and clients that put a marker in everything they
 * send (client ids, user names, passwords, topics, payloads, user properties, HTTP paths and
 * queries), /metrics stays valid text format 0.0.4, parsed strictly here, and never shows the
 * marker.
 */
import net from 'node:net';
import test from 'ava';
import { connect, delay } from './helpers.ts';
import { request, startOpsBroker } from './ops-support.ts';
import { freePort } from './redis-server.ts';

const MARK = 'ZQXMARK';

/** A strict parser of the text format: throws on any line it does not accept; returns the series seen. */
function strictParse(text: string): string[] {
  if (!text.endsWith('\n')) throw new Error('the text must end with a newline');
  const series: string[] = [];
  const typed = new Map<string, string>();
  const lines = text.split('\n');
  lines.pop();
  for (const line of lines) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)(?: (.*))?$/.exec(line);
      if (m === null) {
        if (/^# (HELP|TYPE)/.test(line)) throw new Error(`bad comment line: ${JSON.stringify(line)}`);
        continue;
      }
      if (m[1] === 'TYPE') {
        if (!/^(counter|gauge|histogram|summary|untyped)$/.test(m[3] ?? '')) throw new Error(`bad type: ${line}`);
        if (typed.has(m[2] as string)) throw new Error(`TYPE twice for ${m[2]}`);
        typed.set(m[2] as string, m[3] as string);
      }
      continue;
    }
    // name, then optional {labels}, then a value, then an optional timestamp.
    let i = 0;
    const nameM = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (nameM === null) throw new Error(`bad sample line: ${JSON.stringify(line)}`);
    i = nameM[0].length;
    const labels: string[] = [];
    if (line[i] === '{') {
      i++;
      while (line[i] !== '}') {
        const ln = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
        if (ln === null) throw new Error(`bad label name at ${i}: ${JSON.stringify(line)}`);
        i += ln[0].length;
        if (line[i] !== '=' || line[i + 1] !== '"') throw new Error(`bad label at ${i}: ${JSON.stringify(line)}`);
        i += 2;
        let v = '';
        for (;;) {
          const ch = line[i];
          if (ch === undefined) throw new Error(`unterminated label value: ${JSON.stringify(line)}`);
          if (ch === '"') break;
          if (ch === '\\') {
            const next = line[i + 1];
            if (next === 'n') v += '\n';
            else if (next === '\\' || next === '"') v += next;
            else throw new Error(`bad escape \\${next}: ${JSON.stringify(line)}`);
            i += 2;
            continue;
          }
          v += ch;
          i++;
        }
        i++;
        labels.push(`${ln[0]}=${JSON.stringify(v)}`);
        if (line[i] === ',') i++;
        else if (line[i] !== '}') throw new Error(`bad label separator at ${i}: ${JSON.stringify(line)}`);
      }
      i++;
    }
    const rest = line.slice(i);
    if (!/^ (?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?Inf|NaN|Nan)(?: -?\d+)?$/.test(rest)) throw new Error(`bad value: ${JSON.stringify(line)}`);
    const key = `${nameM[0]}{${labels.sort().join(',')}}`;
    if (series.includes(key)) throw new Error(`series twice: ${key}`);
    series.push(key);
  }
  return series;
}

test('hostile listener names and a client that puts a marker everywhere: /metrics stays valid text and never shows the marker', async (t) => {
  const hostile = ['evil"} 1\nportcullis_fake_total 42\n# x', 'back\\slash\\', 'ünïcødé-名前', 'cr\rlf', 'tab\there'];
  const ports: number[] = [];
  for (let i = 0; i < hostile.length; i++) ports.push(await freePort());
  const b = await startOpsBroker(
    {
      listeners: [
        { name: 'mqtt', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
        ...hostile.map((name, i) => ({ name, type: 'tcp' as const, host: '127.0.0.1', port: ports[i] as number, auth: ['anonymous' as const] })),
      ],
    },
    { http: { metrics: { latencySampleEvery: 1, public: true } } as never },
  );
  t.teardown(() => b.stop());
  const c = await connect(b.mqttPort, { clientId: `${MARK}-client`, username: `${MARK}-user`, password: `${MARK}-pw`, protocolVersion: 5 });
  t.teardown(() => c.end(true));
  for (const port of ports) {
    const h = await connect(port, { clientId: `${MARK}-h${port}`, protocolVersion: 4 });
    t.teardown(() => h.end(true));
  }
  await c.subscribeAsync(`${MARK}/#`, { qos: 1 });
  await c.subscribeAsync(`$share/${MARK}/x/#`, { qos: 1 });
  await c.publishAsync(`${MARK}/t`, `${MARK}-payload`, { qos: 1, properties: { userProperties: { [MARK]: MARK }, contentType: MARK, responseTopic: `${MARK}/r` } });
  // A malformed CONNECT carrying the marker (a protocol name that is not MQTT).
  await new Promise<void>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port: b.mqttPort }, () => {
      const name = Buffer.from(MARK);
      s.end(Buffer.concat([Buffer.from([0x10, 2 + name.length + 10]), Buffer.from([0, name.length]), name, Buffer.from([5, 2, 0, 60, 0, 0, 3, 0x41, 0x42, 0x43])]));
    });
    s.on('close', () => resolve());
    s.on('error', () => resolve());
    setTimeout(() => {
      s.destroy();
      resolve();
    }, 1000);
  });
  const bounded = (p: Promise<unknown>) => Promise.race([p.catch(() => undefined), delay(2000)]);
  for (const p of [`/${MARK}`, `/metrics?${MARK}=1`, `/api/v1/${MARK}`, `/api/v1/clients/${MARK}`]) await bounded(request(b.base, p));
  await bounded(request(b.base, '/metrics', { method: 'DELETE' }));
  await delay(200);
  const r = await request(b.base, '/metrics');
  t.is(r.status, 200);
  t.false(r.text.includes(MARK), `the marker appears: ${r.text.split('\n').filter((l) => l.includes(MARK)).slice(0, 5).join(' | ')}`);
  let series: string[] = [];
  t.notThrows(() => {
    series = strictParse(r.text);
  });
  t.false(series.some((s) => s.startsWith('portcullis_fake_total')), 'no series injected through a listener name');
  for (const name of hostile) {
    t.true(
      series.some((s) => s.startsWith('portcullis_connections{') && s.includes(`listener=${JSON.stringify(name)}`)),
      `listener ${JSON.stringify(name)} round-trips through the escaping`,
    );
  }
});
