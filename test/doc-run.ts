/**
 * Runs the marked blocks of one unit of one page (see test/doc-blocks.ts) in a copy of the
 * project and prints the report as one JSON line. test/docs-run.test.ts starts it inside its own
 * network namespace, so that the documented ports (1883, 8883, ...) are free and private to it.
 *
 *   node --import tsx test/doc-run.ts ROOT FILE UNIT
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseBlocks, runUnit } from './doc-blocks.ts';

const [root, file, unit] = process.argv.slice(2);
if (root === undefined || file === undefined || unit === undefined) {
  process.stderr.write('usage: doc-run.ts ROOT FILE UNIT\n');
  process.exit(2);
}
const blocks = parseBlocks(fs.readFileSync(path.join(root, file), 'utf8'), file).filter((b) => b.unit === Number(unit));
const report = await runUnit(blocks, root);
process.stdout.write(`${JSON.stringify(report)}\n`);
process.exit(0);
