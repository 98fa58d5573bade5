import { open } from 'lmdb';
import fs from 'node:fs';
const mode = process.argv[2];
const dir = '/tmp/lx/d2';
if (mode === 'create') {
  fs.rmSync(dir, { recursive: true, force: true });
  const env = open({ path: dir, maxDbs: 10 });
  const q = env.openDB({ name: 'queue', keyEncoding: 'binary', encoding: 'binary' });
  for (let i = 0; i < 5000; i++) { const k = Buffer.alloc(8); k.writeUInt32BE(i, 4); q.put(k, Buffer.alloc(200, i)); }
  await q.flushed;
  console.log(env.getStats().lastPageNumber, fs.statSync(dir + '/data.mdb').size);
  await env.close();
} else {
  const ov = process.argv[3] === 'ov';
  const env = open({ path: dir, maxDbs: 10, overlappingSync: ov });
  const st = env.getStats();
  console.log('opened', st.lastPageNumber, st.pageSize, fs.statSync(dir + '/data.mdb').size);
  const q = env.openDB({ name: 'queue', keyEncoding: 'binary', encoding: 'binary' });
  let n = 0; for (const e of q.getRange({})) n++;
  console.log('count', n);
  await q.put(Buffer.from('zz'), Buffer.from('x'));
  await env.close();
}
