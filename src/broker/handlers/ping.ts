import type { Connection } from '../connection.ts';

/** PINGREQ: answer PINGRESP [MQTT-3.12.4-1]. Any packet already refreshed the keep-alive. */
export function handlePingreq(conn: Connection): void {
  conn.send({ cmd: 'pingresp' });
}
