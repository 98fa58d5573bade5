/**
 * Loaded by ava before every test file (package.json `ava.require`). Commands the tests run
 * (`portcullis passwd add`, `pki ...`, `ban ...`) spool an admin audit record; without this they
 * would spool into the checkout's data/audit-spool, which a later `npm start` would ingest.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

if (process.env.PORTCULLIS_AUDIT_SPOOL === undefined) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-test-spool-'));
  process.env.PORTCULLIS_AUDIT_SPOOL = dir;
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
}
