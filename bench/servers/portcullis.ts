/**
 * Portcullis for the benchmark, from the configuration bench/lib/brokers.ts wrote (plain TCP, TLS
 * and mTLS listeners; security off or on).
 */
import { createBroker } from '../../src/index.ts';
import { serve, serverConfig } from './args.ts';

const broker = createBroker(serverConfig<Parameters<typeof createBroker>[0]>());
const info = await broker.start();
const port = (name: string): number => {
  const l = info.listeners.find((x) => x.name === name);
  if (l === undefined) throw new Error(`Portcullis started without the '${name}' listener`);
  return l.port;
};
serve({ tcp: port('tcp'), tls: port('tls'), mtls: port('mtls') }, () => broker.stop());
