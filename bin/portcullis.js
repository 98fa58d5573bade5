#!/usr/bin/env node
// The `portcullis` command on plain node: runs the compiled CLI in dist/ (`npm run build`
// writes it; `npm install` in a checkout and `npm pack` run the build through `prepare`).
import { existsSync } from 'node:fs';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  process.stderr.write('portcullis: dist/ is missing: run `npm run build` in the package folder first\n');
  process.exit(1);
}
await import(main.href);
