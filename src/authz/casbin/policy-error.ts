/** A model or policy file that cannot be used. `code` is stable; `file` and `line` say where. */
export class PolicyError extends Error {
  readonly code = 'ERR_PORTCULLIS_POLICY';
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    readonly problem: string,
  ) {
    super(line === undefined ? `${file}: ${problem}` : `${file}:${line}: ${problem}`);
  }
}
