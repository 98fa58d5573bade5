/** Portcullis on one anonymous TCP listener with allow-all, no logging and no audit, for the benchmark. */
import { createBroker } from '../../src/index.ts';
import { serve, serverArgs } from './args.ts';

const { host, port } = serverArgs();
const broker = createBroker({
  listeners: [{ name: 'bench', type: 'tcp', host, port, auth: ['anonymous'] }],
  authorizers: ['allow-all'],
  log: { level: 'silent' },
  audit: { sink: 'none' },
});
const info = await broker.start();
const bound = info.listeners.find((l) => l.name === 'bench') ?? info.listeners[0];
if (bound === undefined) throw new Error('Portcullis started without a listener');
serve(bound.port, () => broker.stop());
