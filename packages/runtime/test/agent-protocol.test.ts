import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import * as protocol from '../src/agent/protocol.js';

// moat-init's protocol.h is the source of truth; protocol.ts is the host's hand-written copy of it.
const HEADER = new URL('../../agent/src/protocol.h', import.meta.url);

/** Where each enum of protocol.h lives on the host, by the prefix of its enumerators. */
const ENUMS: Record<string, Record<string, number>> = { T_: protocol.FrameType, M_: protocol.MuxFrameType };

/**
 * The value of a constant expression as protocol.h writes them: integer
 * literals (decimal or hex, with u/l suffixes), `*` and parentheses.
 */
function evaluate(expr: string, name: string): number {
  const tokens = expr.match(/0x[0-9a-f]+|\d+|[^\s]/gi) ?? [];
  let i = 0;
  const fail = (): never => {
    throw new Error(`protocol.h: cannot read the value of ${name}: ${expr} (this test reads integers, * and parentheses)`);
  };
  const atom = (): number => {
    const t = tokens[i++];
    if (t === '(') {
      const v = product();
      if (tokens[i++] !== ')') fail();
      return v;
    }
    if (t === undefined || !/^(0x[0-9a-f]+|\d+)$/i.test(t)) return fail();
    while (/^[ul]$/i.test(tokens[i] ?? '')) i++;
    return Number(t);
  };
  const product = (): number => {
    let v = atom();
    while (tokens[i] === '*') {
      i++;
      v *= atom();
    }
    return v;
  };
  const v = product();
  if (i !== tokens.length) fail();
  return v;
}

/** Every `#define NAME value` and every enumerator of the header; an enumerator without an explicit value is an error. */
function parseHeader(text: string): { defines: Record<string, number>; enumerators: Record<string, number> } {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  const defines: Record<string, number> = {};
  const enumerators: Record<string, number> = {};
  const add = (into: Record<string, number>, name: string, expr: string) => {
    if (name in into) throw new Error(`protocol.h: ${name} is defined twice`);
    into[name] = evaluate(expr, name);
  };
  for (const [, name, value] of code.matchAll(/^[ \t]*#[ \t]*define[ \t]+(\w+)(.*)$/gm)) {
    if (value.trim()) add(defines, name, value.trim()); // a define without a value is the include guard
  }
  for (const [, body] of code.matchAll(/\benum\b[^{]*\{([^}]*)\}/g)) {
    for (const entry of body
      .split(',')
      .map((e) => e.trim())
      .filter(Boolean)) {
      const m = /^(\w+)\s*=\s*(.+)$/s.exec(entry);
      if (!m) throw new Error(`protocol.h: enumerator without an explicit value: ${entry}`);
      add(enumerators, m[1], m[2]);
    }
  }
  return { defines, enumerators };
}

const header = parseHeader(readFileSync(HEADER, 'utf8'));

test('every enum of protocol.h equals its TypeScript object: same names, same values', () => {
  const byPrefix: Record<string, Record<string, number>> = {};
  for (const [name, value] of Object.entries(header.enumerators)) {
    const prefix = Object.keys(ENUMS).find((p) => name.startsWith(p));
    assert.ok(prefix, `protocol.h: ${name} has no TypeScript counterpart (add its prefix to ENUMS)`);
    (byPrefix[prefix] ??= {})[name.slice(prefix.length)] = value;
  }
  for (const [prefix, ts] of Object.entries(ENUMS)) {
    assert.deepEqual(byPrefix[prefix], { ...ts }, `protocol.h's ${prefix}* enumerators and protocol.ts differ`);
  }
});

test("protocol.h's #defines are protocol.ts's numeric constants", () => {
  const numeric = Object.fromEntries(Object.entries(protocol).filter(([, v]) => typeof v === 'number'));
  assert.deepEqual(header.defines, numeric);
});
