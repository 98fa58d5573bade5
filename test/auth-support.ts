/**
 * Helpers for the authentication tests: the real `portcullis passwd` command, mosquitto_pub,
 * and the MQTT error a refused mqtt.js connect carries.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { MqttClient, type IClientOptions } from 'mqtt';
import { connect } from './helpers.ts';

/**
 * Connects an mqtt.js client from a chosen loopback source address (mqtt.js's own tcp transport
 * ignores `localAddress`), and waits for CONNACK.
 */
export function connectFrom(port: number, localAddress: string, options: IClientOptions = {}): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = new MqttClient(() => net.connect({ port, host: '127.0.0.1', localAddress }), { reconnectPeriod: 0, connectTimeout: 5000, ...options });
    client.once('connect', () => resolve(client));
    client.once('error', (err) => {
      client.end(true);
      reject(err);
    });
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

export const root = fileURLToPath(new URL('..', import.meta.url));

/** Runs `portcullis passwd ...` with `input` on stdin (the password is never an argument). */
export function passwd(args: string[], input = ''): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(root, 'src', 'cli', 'main.ts'), 'passwd', ...args], { cwd: root, input, encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

export function tempDir(t: { teardown(fn: () => void): void }, prefix = 'portcullis-auth-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Connects and resolves with the CONNACK refusal code (mqtt.js error code), or 0 if the connect was accepted. */
export async function refusalCode(port: number, options: IClientOptions & { localAddress?: string }): Promise<{ code: number; message: string }> {
  try {
    const c = options.localAddress !== undefined ? await connectFrom(port, options.localAddress, options) : await connect(port, options);
    c.end(true);
    return { code: 0, message: 'connected' };
  } catch (err) {
    const e = err as { code?: number; message: string };
    return { code: typeof e.code === 'number' ? e.code : -1, message: e.message };
  }
}

/** Runs mosquitto_pub once; resolves with its exit code and stderr. */
export function mosquittoPub(args: string[], ms = 5000): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('/usr/bin/mosquitto_pub', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}
