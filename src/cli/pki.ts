/**
 * `portcullis pki`: a development and small-fleet CA. Everything lives under pki/ by default.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { type Command, InvalidArgumentError } from 'commander';
import { DEFAULT_KEY_TYPE, KEY_TYPES, type KeyType, initPki, issueClient, issueServer, listCertificates, readDeviceCsv, revoke } from '../pki/ca.ts';
import { writeCrl } from '../pki/crl.ts';
import { PkiError, paths, writeSecret } from '../pki/store.ts';

const collect = (value: string, previous: string[]) => [...previous, value];

function positiveInt(name: string) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) throw new PkiError('ERR_PKI_BAD_INPUT', `${name} must be a positive integer, got '${value}'`);
    return n;
  };
}

function keyType(value: string): KeyType {
  if (!(KEY_TYPES as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected ec or rsa, got '${value}'`);
  return value as KeyType;
}

function isoDate(name: string) {
  return (value: string) => {
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) throw new PkiError('ERR_PKI_BAD_INPUT', `${name} must be an ISO date, got '${value}'`);
    return d;
  };
}

/** Runs an action and turns a PkiError into a one-line message and exit code 2. */
function run(action: () => void | Promise<void>): Promise<void> {
  return Promise.resolve()
    .then(action)
    .catch((err: unknown) => {
      if (err instanceof PkiError) {
        process.stderr.write(`portcullis pki: ${err.message}\n`);
        process.exitCode = 2;
        return;
      }
      throw err;
    });
}

const out = (line: string) => process.stdout.write(line + '\n');

export function registerPkiCommand(program: Command): void {
  const pki = program.command('pki').description('a small CA for TLS: CA, server and client certificates, revocation and CRLs');
  pki.option('-d, --dir <dir>', 'the PKI directory', 'pki');
  const dirOf = () => (pki.opts() as { dir: string }).dir;

  pki
    .command('init')
    .description('create a CA, or a root plus an intermediate')
    .option('--cn <name>', 'common name of the root CA', 'Portcullis Root CA')
    .option('--intermediate', 'also create an intermediate CA that issues the certificates')
    .option('--days <n>', 'validity in days', positiveInt('--days'), 3650)
    .option('--force', 'replace an existing CA (every certificate it issued stops being trusted)')
    .option('--key-type <type>', 'key algorithm of the CA and of every certificate it issues: rsa (RSA-2048) or ec (ECDSA P-256)', keyType, DEFAULT_KEY_TYPE)
    .action((o: { cn: string; intermediate?: boolean; days: number; force?: boolean; keyType: KeyType }) =>
      run(() => {
        const r = initPki({ dir: dirOf(), cn: o.cn, days: o.days, keyType: o.keyType, ...(o.intermediate ? { intermediate: true } : {}), ...(o.force ? { force: true } : {}) });
        out(`CA created: ${r.ca} (${o.keyType === 'ec' ? 'ECDSA P-256' : 'RSA-2048'} keys)`);
        out(`CA bundle for listeners (ca:): ${r.chain}`);
        out(`private keys are under ${paths(dirOf()).caKey.replace(/ca\.key$/, '')} (mode 0600)`);
      }),
    );

  pki
    .command('server')
    .description('issue a server certificate')
    .option('--dns <name>', 'a DNS name (repeatable)', collect, [])
    .option('--ip <addr>', 'an IP address (repeatable)', collect, [])
    .option('--cn <name>', 'common name (default: the first DNS name)')
    .option('--days <n>', 'validity in days', positiveInt('--days'), 825)
    .option('--out <base>', 'write BASE.crt and BASE.key instead of pki/server.crt and pki/private/server.key')
    .action((o: { dns: string[]; ip: string[]; cn?: string; days: number; out?: string }) =>
      run(() => {
        const r = issueServer({ dir: dirOf(), dns: o.dns, ip: o.ip.length ? o.ip : ['127.0.0.1'], days: o.days, ...(o.cn ? { cn: o.cn } : {}), ...(o.out ? { out: o.out } : {}) });
        out(`server certificate: ${r.cert} (serial ${r.serial})`);
        out(`server key: ${r.key} (mode 0600)`);
      }),
    );

  pki
    .command('client')
    .description('issue a client certificate, or one per line of a CSV with --batch')
    .option('--cn <name>', 'common name, usually the device id')
    .option('--san <san>', 'subject alternative name: dns:NAME, uri:URI (spiffe://...), email:ADDR, ip:ADDR (repeatable)', collect, [])
    .option('--days <n>', 'validity in days', positiveInt('--days'), 365)
    .option('--not-before <iso>', 'start of validity (default: now)', isoDate('--not-before'))
    .option('--not-after <iso>', 'end of validity (overrides --days)', isoDate('--not-after'))
    .option('--no-client-auth-eku', 'leave out the clientAuth extended key usage')
    .option('--batch <csv>', 'a CSV of devices: cn[,san;san...][,days] per line')
    .action((o: { cn?: string; san: string[]; days: number; notBefore?: Date; notAfter?: Date; clientAuthEku: boolean; batch?: string }) =>
      run(() => {
        const dir = dirOf();
        if (o.batch !== undefined) {
          const devices = readDeviceCsv(o.batch);
          for (const d of devices) {
            const r = issueClient({ dir, cn: d.cn, san: d.san, days: d.days ?? o.days, clientAuthEku: o.clientAuthEku });
            out(`${d.cn}: ${r.cert} (serial ${r.serial})`);
          }
          out(`${devices.length} client certificates issued`);
          return;
        }
        if (o.cn === undefined) throw new PkiError('ERR_PKI_BAD_INPUT', 'give --cn NAME or --batch FILE.csv');
        const r = issueClient({
          dir,
          cn: o.cn,
          san: o.san,
          days: o.days,
          clientAuthEku: o.clientAuthEku,
          ...(o.notBefore ? { notBefore: o.notBefore } : {}),
          ...(o.notAfter ? { notAfter: o.notAfter } : {}),
        });
        out(`client certificate: ${r.cert} (serial ${r.serial})`);
        out(`client key: ${r.key} (mode 0600)`);
      }),
    );

  pki
    .command('revoke')
    .description('revoke a certificate by serial number or certificate file; then run `pki crl`')
    .argument('<serial|file>')
    .action((target: string) =>
      run(() => {
        const e = revoke(dirOf(), target);
        out(`revoked ${e.serial} (${e.subject}); run 'portcullis pki crl' to publish the new CRL`);
      }),
    );

  pki
    .command('crl')
    .description('write the CRL of every revoked certificate')
    .option('--days <n>', 'days until nextUpdate', positiveInt('--days'), 30)
    .option('--next-update <iso>', 'exact nextUpdate (overrides --days)', isoDate('--next-update'))
    .option('--out <file>', 'where to write (default pki/crl.pem)')
    .action((o: { days: number; nextUpdate?: Date; out?: string }) =>
      run(async () => {
        const r = await writeCrl({ dir: dirOf(), days: o.days, ...(o.nextUpdate ? { nextUpdate: o.nextUpdate } : {}), ...(o.out ? { out: o.out } : {}) });
        out(`CRL written: ${r.file} (${r.revoked} revoked, next update ${r.nextUpdate.toISOString()})`);
      }),
    );

  pki
    .command('list')
    .description('list issued certificates with their status')
    .option('--json', 'JSON output')
    .action((o: { json?: boolean }) =>
      run(() => {
        const rows = listCertificates(dirOf());
        if (o.json) {
          out(JSON.stringify(rows, null, 2));
          return;
        }
        out(['STATUS', 'SERIAL', 'KIND', 'NOT AFTER', 'SUBJECT'].join('\t'));
        for (const r of rows) out([r.state, r.serial, r.kind, r.notAfter, r.subject].join('\t'));
      }),
    );

  pki
    .command('psk')
    .description('add a TLS pre-shared key identity to pki/private/psk.txt and print its key once')
    .argument('<identity>')
    .option('--file <file>', 'the PSK file (default pki/private/psk.txt)')
    .action((identity: string, o: { file?: string }) =>
      run(() => {
        if (!/^[\x21-\x7e]+$/.test(identity) || identity.includes(':')) throw new PkiError('ERR_PKI_BAD_INPUT', 'a PSK identity is printable ASCII without spaces or ":"');
        const file = o.file ?? paths(dirOf()).psk;
        const existing = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
        if (existing.split('\n').some((l) => l.split(':')[0] === identity)) throw new PkiError('ERR_PKI_EXISTS', `identity ${identity} is already in ${file}`);
        const key = randomBytes(32).toString('hex');
        writeSecret(file, (existing && !existing.endsWith('\n') ? existing + '\n' : existing) + `${identity}:${key}\n`);
        out(`added ${identity} to ${file}`);
        out(`key (give it to the device; it is not shown again): ${key}`);
      }),
    );
}
