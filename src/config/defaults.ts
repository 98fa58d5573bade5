import type { ConfigInput } from './schema.ts';

/**
 * The built-in configuration used when `portcullis start` gets no --config, after Mosquitto 2's
 * local-only mode: one plain listener on 127.0.0.1:1883 that admits local clients anonymously,
 * with allow-all. Nothing listens beyond loopback.
 */
export const builtInDefaults: ConfigInput = {
  listeners: [{ name: 'local', type: 'tcp', host: '127.0.0.1', port: 1883, auth: ['anonymous'] }],
  authorizers: ['allow-all'],
};
