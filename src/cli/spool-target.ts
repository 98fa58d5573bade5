/**
 * Where the admin record of the running command goes, when the command knows better than the
 * default `--audit-spool`: `policy reload --pid` spools beside the audit file of the broker it
 * signalled, which it learns from that broker's configuration and working directory.
 */
let target: string | undefined;

export function setSpoolTarget(dir: string): void {
  target = dir;
}

export function spoolTarget(): string | undefined {
  return target;
}
