/**
 * A publish crosses the bus as a body the frame writes straight from the message (src/cluster/
 * wire.ts PublishWire, frame.ts): what the receiving node decodes from a signed frame is the
 * message that was sent, field for field (topic in any script, payload, QoS, retain, expiry,
 * origin, a stamp of the sender or of another node, v5 properties with buffers), beside bodies
 * given as buffers, in any order and number. Property test (fast-check), seeded; set WIRE_SEED to
 * replay a failure.
 */
import test from 'ava';
import fc from 'fast-check';
import type { Message } from '../src/broker/message.ts';
import { decodeFrame, encodeFrame, encodePackedFrame, writeBody, type Body } from '../src/cluster/frame.ts';
import { BodyKind, BodyReader, decodeBody, encodeControl, publishHeader, PublishWire } from '../src/cluster/wire.ts';

const SEED = Number(process.env.WIRE_SEED ?? 20261207);
const KEY = { id: 'k1', key: Buffer.alloc(32, 7) };
const SENDER = 'node-a~abc123';

const message: fc.Arbitrary<Message> = fc
  .record({
    topic: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }),
    payload: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
    qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
    retain: fc.boolean(),
    expiresAt: fc.option(fc.integer({ min: 0, max: 2 ** 45 }), { nil: undefined }),
    origin: fc.option(fc.string({ unit: 'grapheme', maxLength: 30 }), { nil: undefined }),
    stamp: fc.option(fc.record({ node: fc.oneof(fc.constant(SENDER), fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 60 })), seq: fc.nat() }), { nil: undefined }),
    properties: fc.option(
      fc.record({ contentType: fc.string({ maxLength: 10 }), correlationData: fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a)), userProperties: fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 })) }),
      { nil: undefined },
    ),
  })
  .map((m) => {
    const out: Message = { topic: m.topic, payload: m.payload, qos: m.qos, retain: m.retain };
    if (m.expiresAt !== undefined) out.expiresAt = m.expiresAt;
    if (m.origin !== undefined) out.origin = m.origin;
    if (m.stamp !== undefined) out.stamp = m.stamp;
    if (m.properties !== undefined) out.properties = m.properties as Message['properties'];
    return out;
  });

const groups = fc.option(fc.array(fc.constantFrom('$share/g/a', '$share/h/#'), { minLength: 1, maxLength: 2 }), { nil: null });

test('a publish written straight into a signed frame decodes, on the receiving node, to the message that was sent', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(message, fc.boolean(), groups, fc.boolean()), { minLength: 1, maxLength: 6 }), (items) => {
      const bodies: Body[] = [];
      for (const [m, plain, g, withControl] of items) {
        bodies.push(new PublishWire(publishHeader(plain, g), m, SENDER));
        if (withControl) bodies.push(encodeControl({ t: 'ack', ids: ['1-0'] }));
      }
      const frame = encodeFrame(KEY, { sender: SENDER, target: 'in:x', ts: 1, seq: 1 }, bodies);
      const decoded = decodeFrame(frame, new Map([[KEY.id, KEY.key]]), 'in:x');
      if ('problem' in decoded) return t.fail(decoded.problem);
      t.is(decoded.bodies.length, bodies.length);
      let i = 0;
      for (const [m, plain, g, withControl] of items) {
        const body = decodeBody(decoded.bodies[i++] as Buffer, decoded.sender);
        if (body.kind !== BodyKind.Publish) return t.fail('not a publish');
        t.is(body.plain, plain);
        t.deepEqual(body.groups, g);
        t.deepEqual(body.message, m);
        if (withControl) t.is(decodeBody(decoded.bodies[i++] as Buffer).kind, BodyKind.Control);
      }
    }),
    { seed: SEED, numRuns: 300 },
  );
});

test('a frame is refused when a byte of a publish written into it changes', (t) => {
  const m: Message = { topic: 'a/b', payload: Buffer.from('x'), qos: 1, retain: false, origin: 'o', stamp: { node: SENDER, seq: 3 } };
  const frame = encodeFrame(KEY, { sender: SENDER, target: 'in:x', ts: 1, seq: 1 }, [new PublishWire(publishHeader(true, null), m, SENDER)]);
  const keys = new Map([[KEY.id, KEY.key]]);
  t.false('problem' in decodeFrame(frame, keys, 'in:x'));
  const at = frame.indexOf('a/b');
  frame[at] = 0x62;
  t.deepEqual(decodeFrame(frame, keys, 'in:x'), { problem: 'bad-signature' });
});

// The sending node sets one writer per message and the receiving node reads with one reader,
// which keep the last topic and origin (as bytes, as strings): message after message, with
// topics and origins repeated, changed to others of the same length, longer than what is kept,
// and left out, what is read is what was sent.
const topicPool = ['a/b', 'a/c', 'b/b', 'ä/b', 'a/bc', 'x'.repeat(200), `${'x'.repeat(199)}y`, 'bench/x'];
const originPool = ['anonymous\u0000pub', 'anonymous\u0000puc', 'другой\u0000p', 'o'.repeat(300), `${'o'.repeat(299)}p`];
const repeating: fc.Arbitrary<Message> = fc
  .record({
    topic: fc.constantFrom(...topicPool),
    origin: fc.option(fc.constantFrom(...originPool), { nil: undefined }),
    payload: fc.uint8Array({ maxLength: 70 }).map((a) => Buffer.from(a)),
    qos: fc.constantFrom(0 as const, 1 as const),
    seq: fc.nat(),
  })
  .map(({ topic, origin, payload, qos, seq }) => {
    const m: Message = { topic, payload, qos, retain: false };
    if (origin !== undefined) m.origin = origin;
    m.stamp = { node: SENDER, seq };
    return m;
  });

test('one writer and one reader, reused from message to message, carry each message as it was sent', (t) => {
  const wire = new PublishWire();
  const reader = new BodyReader();
  fc.assert(
    fc.property(fc.array(fc.array(repeating, { minLength: 1, maxLength: 20 }), { minLength: 1, maxLength: 4 }), (frames) => {
      for (const messages of frames) {
        // Written as the outbox does: each body packed at once, before the writer is set again.
        const packed = Buffer.alloc(64 * 1024);
        let used = 0;
        for (const m of messages) {
          const w = wire.set(publishHeader(true, null), m, SENDER);
          used = writeBody(packed, used, w, w.length);
        }
        const frame = encodePackedFrame(KEY, { sender: SENDER, target: 'in:x', ts: 1, seq: 1 }, messages.length, packed, used);
        const decoded = decodeFrame(frame, new Map([[KEY.id, KEY.key]]), 'in:x');
        if ('problem' in decoded) return t.fail(decoded.problem);
        for (let i = 0; i < messages.length; i++) {
          t.true(reader.read(decoded.buf, decoded.spans[2 * i] as number, decoded.spans[2 * i + 1] as number, decoded.sender));
          t.deepEqual(reader.message, messages[i]);
        }
      }
    }),
    { seed: SEED, numRuns: 200 },
  );
});
