import fs from 'node:fs';
import YAML from 'yaml';
import { type Config, ConfigError, parseConfig } from './schema.ts';

/** Reads a YAML or JSON configuration file and validates it. Errors name the file and each bad key. */
export function loadConfigFile(file: string): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read configuration file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text, { prettyErrors: true });
  } catch (err) {
    throw new ConfigError(`configuration file ${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`);
  }
  if (raw !== null && raw !== undefined && (typeof raw !== 'object' || Array.isArray(raw))) {
    throw new ConfigError(`configuration file ${file} must hold a mapping of keys, not ${Array.isArray(raw) ? 'a list' : typeof raw}`);
  }
  return parseConfig(raw ?? {}, `configuration file ${file}`);
}
