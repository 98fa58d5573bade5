/**
 * Policy and model files are read the way people read them. An editor, a terminal or a code
 * review shows line breaks and characters that a parser splitting on `\n` would not see, or
 * hides characters that the parser would see. Such a file could show a reviewer a deny rule
 * that the broker reads as part of a comment, or a subject the broker reads as another name. So
 * every character that is not shown as it is read is refused, with the file, line and column:
 *
 * - line ends other than LF and CRLF: a lone CR, NEL (U+0085), LINE SEPARATOR (U+2028),
 *   PARAGRAPH SEPARATOR (U+2029), and the vertical tab and form feed;
 * - other control characters (C0 but tab, DEL, C1);
 * - invisible characters: zero-width spaces and joiners, the word joiner and invisible
 *   operators, soft hyphen, combining grapheme joiner, Hangul fillers, variation selectors,
 *   tag characters, and a byte order mark anywhere but at the very start;
 * - bidirectional controls (embeddings, overrides, isolates and marks), which reorder what is
 *   shown [Trojan Source, CVE-2021-42574].
 */
import { PolicyError } from './policy-error.ts';

const NAMES: Record<number, string> = {
  0x0b: 'LINE TABULATION',
  0x0c: 'FORM FEED',
  0x0d: 'CARRIAGE RETURN',
  0x85: 'NEXT LINE (NEL)',
  0xad: 'SOFT HYPHEN',
  0x034f: 'COMBINING GRAPHEME JOINER',
  0x061c: 'ARABIC LETTER MARK',
  0x115f: 'HANGUL CHOSEONG FILLER',
  0x1160: 'HANGUL JUNGSEONG FILLER',
  0x180e: 'MONGOLIAN VOWEL SEPARATOR',
  0x200b: 'ZERO WIDTH SPACE',
  0x200c: 'ZERO WIDTH NON-JOINER',
  0x200d: 'ZERO WIDTH JOINER',
  0x200e: 'LEFT-TO-RIGHT MARK',
  0x200f: 'RIGHT-TO-LEFT MARK',
  0x2028: 'LINE SEPARATOR',
  0x2029: 'PARAGRAPH SEPARATOR',
  0x202a: 'LEFT-TO-RIGHT EMBEDDING',
  0x202b: 'RIGHT-TO-LEFT EMBEDDING',
  0x202c: 'POP DIRECTIONAL FORMATTING',
  0x202d: 'LEFT-TO-RIGHT OVERRIDE',
  0x202e: 'RIGHT-TO-LEFT OVERRIDE',
  0x2060: 'WORD JOINER',
  0x2061: 'FUNCTION APPLICATION',
  0x2062: 'INVISIBLE TIMES',
  0x2063: 'INVISIBLE SEPARATOR',
  0x2064: 'INVISIBLE PLUS',
  0x2066: 'LEFT-TO-RIGHT ISOLATE',
  0x2067: 'RIGHT-TO-LEFT ISOLATE',
  0x2068: 'FIRST STRONG ISOLATE',
  0x2069: 'POP DIRECTIONAL ISOLATE',
  0x3164: 'HANGUL FILLER',
  0xfeff: 'ZERO WIDTH NO-BREAK SPACE (byte order mark)',
  0xffa0: 'HALFWIDTH HANGUL FILLER',
};

const LINE_BREAKS = new Set([0x0b, 0x0c, 0x0d, 0x85, 0x2028, 0x2029]);
const BIDI = new Set([0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069]);

/** Why a code point is refused, or undefined when it reads as it shows. */
export function unreadable(cp: number): string | undefined {
  if (cp === 0x09 || cp === 0x0a) return undefined;
  if (LINE_BREAKS.has(cp)) return 'a line break other than LF or CRLF: an editor shows a new line here that the broker would not read; save the file with LF or CRLF line ends';
  if (BIDI.has(cp)) return 'a bidirectional control: it reorders what an editor or a review shows';
  if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) return 'a control character';
  if (
    NAMES[cp] !== undefined ||
    (cp >= 0xfe00 && cp <= 0xfe0f) || // variation selectors
    (cp >= 0xe0000 && cp <= 0xe007f) || // tag characters
    (cp >= 0xe0100 && cp <= 0xe01ef) // variation selectors supplement
  ) {
    return 'an invisible character: an editor or a review does not show it, the broker would read it';
  }
  return undefined;
}

/** `U+200B ZERO WIDTH SPACE`. */
export function codePointName(cp: number): string {
  const hex = cp.toString(16).toUpperCase().padStart(4, '0');
  const name = NAMES[cp] ?? (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) ? 'control character' : cp >= 0xfe00 && cp <= 0xfe0f ? 'VARIATION SELECTOR' : cp >= 0xe0000 && cp <= 0xe007f ? 'TAG CHARACTER' : 'invisible character');
  return `U+${hex} ${name}`;
}

/**
 * Refuses text holding any character that is not read as it is shown. A byte order mark at the
 * very start is allowed (and ignored); a CR is allowed only before LF. Returns the text without
 * the byte order mark. Throws {@link PolicyError} naming the file, the line (counted in LF, as
 * the parser counts) and the column.
 */
export function readableText(text: string, file: string): string {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  let line = 1;
  let column = 0;
  for (let i = 0; i < body.length; i++) {
    const cp = body.codePointAt(i) as number;
    column++;
    if (cp === 0x0a) {
      line++;
      column = 0;
      continue;
    }
    if (cp === 0x0d && body.charCodeAt(i + 1) === 0x0a) continue;
    const why = unreadable(cp);
    if (why !== undefined) throw new PolicyError(file, line, `${codePointName(cp)} at column ${column}: ${why}`);
    if (cp > 0xffff) i++; // the second half of a surrogate pair
  }
  return body;
}
