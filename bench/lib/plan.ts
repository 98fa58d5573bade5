/**
 * What the suite measures: the scenarios, the metrics each one reports, and the targets from the
 * performance issue that the report checks them against.
 */
import type { BrokerName, Security, Transport } from './brokers.ts';
import type { ThroughputSpec } from './scenarios.ts';

export const SCENARIOS = [
  'fanin',
  'fanout',
  'fanin-mtls',
  'fanout-mtls',
  'qos1',
  'qos2',
  'wildcard',
  'retained',
  'connect-tcp',
  'connect-tls',
  'connect-mtls',
  'memory',
  'memory-mtls',
] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export type ScenarioKind = 'throughput' | 'retained' | 'connect' | 'memory';

export const PAYLOAD = 64;

export interface ScenarioInfo {
  kind: ScenarioKind;
  transport: Transport;
  title: string;
}

export const SCENARIO_INFO: Record<ScenarioName, ScenarioInfo> = {
  fanin: { kind: 'throughput', transport: 'tcp', title: 'QoS 0 fan-in 10→1' },
  fanout: { kind: 'throughput', transport: 'tcp', title: 'QoS 0 fan-out 1→50' },
  'fanin-mtls': { kind: 'throughput', transport: 'mtls', title: 'QoS 0 fan-in 10→1, mTLS' },
  'fanout-mtls': { kind: 'throughput', transport: 'mtls', title: 'QoS 0 fan-out 1→50, mTLS' },
  qos1: { kind: 'throughput', transport: 'tcp', title: 'QoS 1 1→1' },
  qos2: { kind: 'throughput', transport: 'tcp', title: 'QoS 2 1→1' },
  wildcard: { kind: 'throughput', transport: 'tcp', title: 'QoS 0 wildcard 4→8 over 100 topics' },
  retained: { kind: 'retained', transport: 'tcp', title: 'Retained → new `+/sensor/#` subscriber' },
  'connect-tcp': { kind: 'connect', transport: 'tcp', title: 'Connects, plain TCP' },
  'connect-tls': { kind: 'connect', transport: 'tls', title: 'Connects, TLS' },
  'connect-mtls': { kind: 'connect', transport: 'mtls', title: 'Connects, mTLS' },
  memory: { kind: 'memory', transport: 'tcp', title: 'Idle memory, plain TCP' },
  'memory-mtls': { kind: 'memory', transport: 'mtls', title: 'Idle memory, mTLS' },
};

export const DEFAULT_WINDOWS: Partial<Record<ScenarioName, number>> = {
  fanin: 200,
  fanout: 1000,
  'fanin-mtls': 200,
  'fanout-mtls': 1000,
  qos1: 200,
  qos2: 20,
  wildcard: 200,
};

const KINDS = ['temp', 'hum', 'co2', 'pm25', 'noise'];
/** Wildcard scenario: publisher p cycles through 25 topics `zone<n>/sensor/<kind>/dev<k>`. */
const wildcardTopics = (p: number): string[] => Array.from({ length: 25 }, (_, k) => `zone${p * 25 + k}/sensor/${KINDS[k % KINDS.length]}/dev${k}`);
/** Each subscriber one filter; every filter matches every published topic exactly once. */
const WILDCARD_FILTERS = ['+/sensor/#', '+/sensor/+/+', '+/sensor/+/#'];
// Every scenario topic and filter lies under the bench user's ACL (BENCH_FILTERS in security.ts).
/** 500 subscriptions of one more client that match nothing published: a bigger tree to walk. */
const WILDCARD_BACKGROUND = Array.from({ length: 500 }, (_, i) => `zone${i % 100}/sensor/idle${Math.floor(i / 100)}/+`);

export function throughputSpec(name: ScenarioName, durationMs: number, window: number): ThroughputSpec {
  const base = { payloadSize: PAYLOAD, window, durationMs };
  switch (name) {
    case 'fanin':
    case 'fanin-mtls':
      return { ...base, publishers: 10, subscribers: 1, qos: 0, topic: (i) => `bench/fanin/${i}`, filter: 'bench/fanin/+' };
    case 'fanout':
    case 'fanout-mtls':
      return { ...base, publishers: 1, subscribers: 50, qos: 0, topic: () => 'bench/fanout', filter: 'bench/fanout' };
    case 'qos1':
      return { ...base, publishers: 1, subscribers: 1, qos: 1, topic: () => 'bench/qos1', filter: 'bench/qos1' };
    case 'qos2':
      return { ...base, publishers: 1, subscribers: 1, qos: 2, topic: () => 'bench/qos2', filter: 'bench/qos2' };
    case 'wildcard':
      return { ...base, publishers: 4, subscribers: 8, qos: 0, topic: wildcardTopics, filter: (s) => WILDCARD_FILTERS[s % WILDCARD_FILTERS.length]!, background: WILDCARD_BACKGROUND };
    default:
      throw new Error(`${name} is not a throughput scenario`);
  }
}

/** One number a scenario reports, per run. */
export interface MetricDef {
  scenario: ScenarioName;
  /** Which set of runs it comes from ('main', or 'latency' for the paced QoS 1 run). */
  part: 'main' | 'latency';
  key: string;
  label: string;
  unit: 'msgs/s' | 'ms' | 'connects/s' | 'KiB';
  higherIsBetter: boolean;
}

export function metricsOf(s: ScenarioName, rate: number): MetricDef[] {
  const t = SCENARIO_INFO[s].title;
  switch (SCENARIO_INFO[s].kind) {
    case 'throughput': {
      const m: MetricDef[] = [{ scenario: s, part: 'main', key: 'rate', label: `${t}: msgs/s`, unit: 'msgs/s', higherIsBetter: true }];
      if (s === 'qos1') {
        m.push({ scenario: s, part: 'latency', key: 'p50', label: `QoS 1 latency p50 @ ${rate} msg/s: ms`, unit: 'ms', higherIsBetter: false });
        m.push({ scenario: s, part: 'latency', key: 'p99', label: `QoS 1 latency p99 @ ${rate} msg/s: ms`, unit: 'ms', higherIsBetter: false });
      }
      return m;
    }
    case 'retained':
      return [{ scenario: s, part: 'main', key: 'ms', label: `${t}: ms to receive all`, unit: 'ms', higherIsBetter: false }];
    case 'connect':
      return [
        { scenario: s, part: 'main', key: 'rate', label: `${t}: connects/s`, unit: 'connects/s', higherIsBetter: true },
        { scenario: s, part: 'main', key: 'cpuMs', label: `${t}: broker CPU ms per connect`, unit: 'ms', higherIsBetter: false },
      ];
    case 'memory':
      return [
        { scenario: s, part: 'main', key: 'kb', label: `${t}: KiB per connection`, unit: 'KiB', higherIsBetter: false },
        { scenario: s, part: 'main', key: 'kbMarginal', label: `${t}: marginal KiB per connection (second half)`, unit: 'KiB', higherIsBetter: false },
      ];
  }
}

/** A target from the performance issue, checked against medians. */
export interface Target {
  text: string;
  scenario: ScenarioName;
  key: string;
  part: 'main' | 'latency';
  /** Portcullis in this configuration ... */
  security: Security;
  /** ... against: the best peer in the same configuration, one peer, or an absolute bound. */
  against: 'best-peer' | BrokerName | 'absolute';
  /** ratio (Portcullis / peer) ≥ bound when `atLeast`, ≤ bound otherwise; or the absolute value. */
  bound: number;
  atLeast: boolean;
}

export const TARGETS: Target[] = [
  ...(['fanin', 'fanout', 'fanin-mtls', 'fanout-mtls'] as const).map(
    (s): Target => ({ text: `${SCENARIO_INFO[s].title}, security on: ≥ 1.2× best peer (security on)`, scenario: s, key: 'rate', part: 'main', security: 'on', against: 'best-peer', bound: 1.2, atLeast: true }),
  ),
  { text: 'QoS 1 1→1, security on: ≥ 1.2× best peer (security on)', scenario: 'qos1', key: 'rate', part: 'main', security: 'on', against: 'best-peer', bound: 1.2, atLeast: true },
  { text: 'QoS 1 p99 at 1k msg/s, security on: ≤ 2 ms', scenario: 'qos1', key: 'p99', part: 'latency', security: 'on', against: 'absolute', bound: 2, atLeast: false },
  { text: 'Plain TCP connects/s with password auth (warm cache): ≥ Mosquitto with its password file', scenario: 'connect-tcp', key: 'rate', part: 'main', security: 'on', against: 'mosquitto', bound: 1, atLeast: true },
  { text: 'Anonymous connects/s: ≥ 0.5× Mosquitto', scenario: 'connect-tcp', key: 'rate', part: 'main', security: 'off', against: 'mosquitto', bound: 0.5, atLeast: true },
  { text: 'Anonymous connects/s: ≥ 4× Aedes', scenario: 'connect-tcp', key: 'rate', part: 'main', security: 'off', against: 'aedes', bound: 4, atLeast: true },
  { text: 'mTLS broker CPU per handshake: ≤ 1.25× Mosquitto (security off)', scenario: 'connect-mtls', key: 'cpuMs', part: 'main', security: 'off', against: 'mosquitto', bound: 1.25, atLeast: false },
  { text: 'mTLS broker CPU per handshake: ≤ 1.25× Mosquitto (security on)', scenario: 'connect-mtls', key: 'cpuMs', part: 'main', security: 'on', against: 'mosquitto', bound: 1.25, atLeast: false },
  { text: 'Idle memory, plain: ≤ 5 KiB per connection (security off)', scenario: 'memory', key: 'kb', part: 'main', security: 'off', against: 'absolute', bound: 5, atLeast: false },
  { text: 'Idle memory, plain: ≤ 5 KiB per connection (security on)', scenario: 'memory', key: 'kb', part: 'main', security: 'on', against: 'absolute', bound: 5, atLeast: false },
  { text: 'Idle memory, plain, marginal (the second half of the connections): ≤ 5 KiB per connection (security off)', scenario: 'memory', key: 'kbMarginal', part: 'main', security: 'off', against: 'absolute', bound: 5, atLeast: false },
  { text: 'Idle memory, plain, marginal (the second half of the connections): ≤ 5 KiB per connection (security on)', scenario: 'memory', key: 'kbMarginal', part: 'main', security: 'on', against: 'absolute', bound: 5, atLeast: false },
  { text: 'Idle memory, mTLS: ≤ 2× Mosquitto (security off)', scenario: 'memory-mtls', key: 'kb', part: 'main', security: 'off', against: 'mosquitto', bound: 2, atLeast: false },
  { text: 'Idle memory, mTLS: ≤ 2× Mosquitto (security on)', scenario: 'memory-mtls', key: 'kb', part: 'main', security: 'on', against: 'mosquitto', bound: 2, atLeast: false },
];
