// A development token minter: signs a JWT with a private key file, so the JWT examples
// (jwt-backend.yaml, mixed-chain.yaml) can be tried without an identity provider, offline.
// Plain node, no dependencies. Not for production: your identity provider issues real tokens.
//
//   node docs/examples/mint-jwt.mjs KEY.pem SUBJECT ['{"roles":["device"],"cid":"..."}']
//
// KEY.pem is an EC P-256 (ES256) or RSA (RS256) private key, for example from
//   openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out pki/private/idp.key
//   openssl pkey -in pki/private/idp.key -pubout -out pki/idp-public.pem   # the broker's keyFiles
// The token carries iss https://idp.example.com/, aud mqtt-broker (what the examples expect),
// sub SUBJECT, the extra claims given as JSON, and expires in an hour.
import { createPrivateKey, sign } from 'node:crypto';
import fs from 'node:fs';

const [keyFile, subject, extra = '{}'] = process.argv.slice(2);
if (keyFile === undefined || subject === undefined) {
  process.stderr.write('usage: node docs/examples/mint-jwt.mjs KEY.pem SUBJECT [CLAIMS-JSON]\n');
  process.exit(2);
}
const key = createPrivateKey(fs.readFileSync(keyFile));
const alg = key.asymmetricKeyType === 'ec' ? 'ES256' : key.asymmetricKeyType === 'rsa' ? 'RS256' : undefined;
if (alg === undefined) {
  process.stderr.write(`${keyFile}: an EC P-256 or RSA private key is needed, not ${key.asymmetricKeyType}\n`);
  process.exit(2);
}
const now = Math.floor(Date.now() / 1000);
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
const input = `${b64({ alg, typ: 'JWT' })}.${b64({ iss: 'https://idp.example.com/', aud: 'mqtt-broker', sub: subject, iat: now, exp: now + 3600, ...JSON.parse(extra) })}`;
// ES256 signatures are the raw r || s pair (JWS), not DER.
const signature = sign('sha256', Buffer.from(input), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key);
process.stdout.write(`${input}.${signature.toString('base64url')}\n`);
