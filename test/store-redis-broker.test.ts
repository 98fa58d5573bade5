/**
 * A real broker process on the Redis store (`store: { type: redis }`): what a publisher saw
 * acknowledged survives kill -9 of the broker; while Redis is down the broker refuses what it
 * cannot store (v5 PUBACK 0x80), keeps serving QoS 0, and acknowledges again once Redis is back.
 */
import fs from 'node:fs';
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { delay, startBrokerProcess, tempDir, type BrokerProcess } from './interop/broker-process.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix } from './store-redis-support.ts';

const config = (redis: RedisServer, prefix: string) => ({
  listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
  authorizers: ['allow-all'],
  store: { type: 'redis', url: redis.url, prefix, commandTimeoutMs: 10_000 },
  audit: { sink: 'file', path: 'audit.jsonl', fsyncIntervalMs: 0 },
  sys: { intervalSeconds: 0 },
});

function client(port: number, options: IClientOptions, onMessage?: (topic: string, payload: Buffer) => void): Promise<{ c: MqttClient; present: boolean }> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5, ...options });
    if (onMessage) c.on('message', onMessage);
    c.once('connect', (ack) => resolve({ c, present: ack.sessionPresent }));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
  });
}

/** Publishes QoS 1 and resolves with the PUBACK reason code. */
async function puback(c: MqttClient, topic: string, payload: string): Promise<number> {
  let code = -1;
  const on = (p: mqtt.Packet) => {
    if (p.cmd === 'puback') code = (p as { reasonCode?: number }).reasonCode ?? 0;
  };
  c.on('packetreceive', on);
  await c.publishAsync(topic, payload, { qos: 1 }).catch(() => undefined);
  c.off('packetreceive', on);
  return code;
}

function kill(b: BrokerProcess): Promise<void> {
  return new Promise((resolve) => {
    process.kill(b.pid, 'SIGKILL');
    const poll = setInterval(() => {
      try {
        process.kill(b.pid, 0);
      } catch {
        clearInterval(poll);
        resolve();
      }
    }, 20);
  });
}

test('kill -9 of a broker on Redis: the persistent subscriber resumes with session present and gets the QoS 1 message published while it was offline', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.dispose());
  const dir = tempDir('portcullis-redis-broker-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const prefix = freshPrefix('broker:');
  let b = await startBrokerProcess({ config: config(redis, prefix), cwd: dir });
  const sub = await client(b.port('tcp'), { clientId: 'resumer', clean: false, properties: { sessionExpiryInterval: 600 } });
  await sub.c.subscribeAsync('owed/#', { qos: 1 });
  await sub.c.endAsync();
  const pub = await client(b.port('tcp'), { clientId: 'pub' });
  t.is(await puback(pub.c, 'owed/1', 'kept'), 0, 'acknowledged once in Redis');
  pub.c.end(true);
  await kill(b);

  b = await startBrokerProcess({ config: config(redis, prefix), cwd: dir });
  t.teardown(() => b.stop());
  const got: string[] = [];
  const back = await client(b.port('tcp'), { clientId: 'resumer', clean: false, properties: { sessionExpiryInterval: 600 } }, (_t, p) => got.push(p.toString()));
  t.true(back.present, 'session present = 1 after the crash');
  for (let i = 0; i < 100 && got.length === 0; i++) await delay(50);
  t.deepEqual(got, ['kept']);
  const opened = await b.waitForAudit((r) => r.event === 'store' && r.action === 'open' && /did not stop cleanly/.test(String(r.reason)));
  t.regex(String(opened?.reason), /^redis store opened: 1 sessions, 1 queued/, 'the second open (the audit file holds both) says the broker was killed');
  back.c.end(true);
});

test('Redis stopped: QoS 1 for a persistent session gets PUBACK 0x80 (v5), QoS 0 still flows, the broker keeps running; Redis back: PUBACK 0x00 again', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.dispose());
  const dir = tempDir('portcullis-redis-broker-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const b = await startBrokerProcess({ config: config(redis, freshPrefix('broker:')), cwd: dir });
  t.teardown(() => b.stop());
  const port = b.port('tcp');
  const offline = await client(port, { clientId: 'offline', clean: false, properties: { sessionExpiryInterval: 600 } });
  await offline.c.subscribeAsync('stored/#', { qos: 1 });
  await offline.c.endAsync();
  const live = await client(port, { clientId: 'live' });
  await live.c.subscribeAsync('live/#', { qos: 0 });
  const pub = await client(port, { clientId: 'pub' });
  t.is(await puback(pub.c, 'stored/1', 'one'), 0);

  await redis.stop();
  t.is(await puback(pub.c, 'stored/2', 'refused'), 0x80, 'what cannot be stored is refused, not acknowledged');
  const q0 = new Promise<string>((r) => live.c.once('message', (_t, p) => r(p.toString())));
  await pub.c.publishAsync('live/x', 'still flowing', { qos: 0 });
  t.is(await Promise.race([q0, delay(5000).then(() => 'nothing')]), 'still flowing');
  t.truthy(await b.waitForLog((l) => l.msg.startsWith('store write failed'), 3000), 'logged once per episode');
  t.truthy(await b.waitForAudit((r) => r.event === 'store' && r.action === 'write-failed', 3000), 'audited');

  await redis.restart();
  let code = -1;
  for (let i = 0; i < 60 && code !== 0; i++) {
    code = await puback(pub.c, 'stored/3', 'back');
    if (code !== 0) await delay(100);
  }
  t.is(code, 0, 'acknowledged again once Redis is back, without restarting the broker');
  t.truthy(await b.waitForLog((l) => l.msg === 'store writes succeed again', 3000));
  const got: string[] = [];
  const back = await client(port, { clientId: 'offline', clean: false, properties: { sessionExpiryInterval: 600 } }, (_t, p) => got.push(p.toString()));
  t.true(back.present);
  for (let i = 0; i < 100 && !got.includes('back'); i++) await delay(50);
  t.true(got.includes('one') && got.includes('back'), `the acknowledged messages arrive (${got.join(', ')})`);
  for (const c of [back.c, live.c, pub.c]) c.end(true);
});
