/**
 * The durable LMDB store against the shared Store conformance suite, once with each durability
 * setting and once with encryption at rest.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { LmdbStore } from '../src/store/lmdb.ts';
import { storeConformance } from './store-conformance.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-lmdb-'));
test.after.always(() => fs.rmSync(root, { recursive: true, force: true }));

let n = 0;
const folder = (): string => path.join(root, `s${++n}`);
const key = { id: 'k1', key: Buffer.alloc(32, 7) };

storeConformance('lmdb (sync)', async () => new LmdbStore({ path: folder() }));
storeConformance('lmdb (commit)', async () => new LmdbStore({ path: folder(), durability: 'commit' }));
storeConformance('lmdb (encrypted)', async () => new LmdbStore({ path: folder(), keys: [key] }));
