import { pino } from 'pino';

export type Logger = pino.Logger;

/** Structured JSON logs. Secrets are redacted by path as a second line of defence. */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { name: 'portcullis' },
      redact: { paths: ['password', '*.password', 'token', '*.token', 'key', '*.key'], censor: '[redacted]' },
    },
    destination ?? pino.destination({ fd: 2, sync: false }),
  );
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
