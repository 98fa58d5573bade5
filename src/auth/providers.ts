/**
 * Builds the password, JWT and module providers from their configuration and turns their
 * file errors into configuration errors naming the key.
 */
import type { CredentialCacheConfig, JwtProviderConfig, ModuleProviderConfig, PasswordProviderConfig } from '../config/auth-schema.ts';
import { KeyFileError } from './jwt/keys.ts';
import { JwtAuthenticator } from './jwt/provider.ts';
import { ModuleAuthenticator } from './module.ts';
import { PasswordFileError } from './password/file.ts';
import { PasswordAuthenticator } from './password/provider.ts';
import type { Authenticator } from './types.ts';

/** A provider setting that cannot be used; `key` is the configuration key relative to the provider. */
export class ProviderSetupError extends Error {
  readonly code = 'ERR_PORTCULLIS_PROVIDER';
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

export function makeOwnProvider(p: PasswordProviderConfig | JwtProviderConfig | ModuleProviderConfig, cache: CredentialCacheConfig): Authenticator {
  switch (p.provider) {
    case 'password':
      try {
        return new PasswordAuthenticator(p, cache);
      } catch (err) {
        if (err instanceof PasswordFileError) throw new ProviderSetupError('file', err.message);
        throw err;
      }
    case 'jwt':
      try {
        return new JwtAuthenticator(p);
      } catch (err) {
        if (err instanceof KeyFileError) throw new ProviderSetupError(`keyFiles[${err.index}]`, err.message);
        throw err;
      }
    case 'module':
      return new ModuleAuthenticator(p.path, p.options);
  }
}
