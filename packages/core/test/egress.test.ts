import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Value } from '@sinclair/typebox/value';
import { MoatError } from '../src/errors.js';
import { EgressPolicySchema, canonicalHost, decideEgress, validateEgressPolicy, type EgressPolicy } from '../src/egress.js';

const allowList = (...rules: NonNullable<EgressPolicy['rules']>): EgressPolicy => ({ mode: 'allow-list', rules });

describe('EgressPolicySchema', () => {
  const valid = (p: unknown) => Value.Check(EgressPolicySchema, p);

  test('accepts names, wildcards, IP literals and the full rule shape', () => {
    assert.ok(valid({}));
    assert.ok(valid({ mode: 'allow-all-public' }));
    for (const host of ['example.com', 'EXAMPLE.com.', '*.example.com', '*', 'localhost', '10.0.0.1', '::1', '[2001:db8::1]', 'a_b.example']) {
      assert.ok(valid(allowList({ action: 'allow', host })), host);
    }
    assert.ok(valid(allowList({ action: 'deny', host: 'x.example', ports: [80, 443], methods: ['GET'], paths: ['/api'] })));
  });

  test('rejects unknown modes and fields, bad hosts, ports, methods and paths', () => {
    assert.ok(!valid({ mode: 'allow-everything' }));
    assert.ok(!valid({ mode: 'allow-list', extra: 1 }));
    assert.ok(!valid(allowList({ action: 'allow', host: 'x.example', extra: true } as never)));
    for (const host of [
      '',
      'http://x.example',
      'x.example:443',
      'user@x.example',
      'x.example/path',
      '*example.com',
      'a.*.example',
      '**',
      'x .example',
      '-x.example',
    ]) {
      assert.ok(!valid(allowList({ action: 'allow', host })), host);
    }
    assert.ok(!valid(allowList({ action: 'allow', host: 'x.example', ports: [0] })));
    assert.ok(!valid(allowList({ action: 'allow', host: 'x.example', ports: [65536] })));
    assert.ok(!valid(allowList({ action: 'allow', host: 'x.example', ports: [] })));
    assert.ok(!valid(allowList({ action: 'allow', host: 'x.example', methods: ['GET /'] })));
    assert.ok(!valid(allowList({ action: 'allow', host: 'x.example', paths: ['api'] })));
    assert.ok(!valid({ mode: 'allow-list', rules: Array.from({ length: 257 }, () => ({ action: 'allow', host: 'x.example' })) }));
  });

  test('validateEgressPolicy rejects what the pattern lets through and fills the default mode', () => {
    assert.equal(validateEgressPolicy({}).mode, 'deny-all');
    for (const host of ['999.1.1.1', '1:2:3', '*.10.0.0.1']) {
      assert.throws(
        () => validateEgressPolicy(allowList({ action: 'allow', host })),
        (e: unknown) => e instanceof MoatError && e.code === 422 && e.message.includes('rules[0].host'),
        host,
      );
    }
    assert.doesNotThrow(() => validateEgressPolicy(allowList({ action: 'allow', host: '*.example.com' }, { action: 'deny', host: '::ffff:10.0.0.1' })));
  });
});

describe('canonicalHost', () => {
  test('case, trailing dot, brackets, mapped and numeric IPv4 forms', () => {
    assert.equal(canonicalHost('API.Example.COM.'), 'api.example.com');
    assert.equal(canonicalHost('[::1]'), '::1');
    assert.equal(canonicalHost('0:0:0:0:0:0:0:1'), '::1');
    assert.equal(canonicalHost('::ffff:127.0.0.1'), '127.0.0.1');
    assert.equal(canonicalHost('2130706433'), '127.0.0.1');
    assert.equal(canonicalHost('0x7f.1'), '127.0.0.1');
  });
  test('rejects anything that is not a host', () => {
    for (const h of ['', 'a@b.example', 'b.example:80', 'b.example/x', '999.1.1.1', '[::1', 'a b']) assert.equal(canonicalHost(h), undefined, h);
  });
});

describe('decideEgress', () => {
  const at = (host: string, port = 443, method?: string, path?: string) => ({ host, port, method, path });

  test('deny-all is the default and ignores rules, even allow rules', () => {
    assert.deepEqual(decideEgress(undefined, at('example.com')).allowed, false);
    const d = decideEgress({ rules: [{ action: 'allow', host: '*' }] }, at('example.com'));
    assert.equal(d.allowed, false);
    assert.match(d.reason, /deny-all/);
    assert.equal(decideEgress({ mode: 'deny-all', rules: [{ action: 'allow', host: '*' }] }, at('example.com')).allowed, false);
  });

  test('allow-list: only a matching allow rule permits, and names the rule', () => {
    const p = allowList({ action: 'allow', host: 'api.example.com' });
    const ok = decideEgress(p, at('API.example.com.'));
    assert.equal(ok.allowed, true);
    assert.equal(ok.ruleIndex, 0);
    assert.equal(ok.rule, 'rules[0] "allow api.example.com"');
    const no = decideEgress(p, at('example.com'));
    assert.equal(no.allowed, false);
    assert.equal(no.rule, undefined);
    assert.equal(no.reason, 'no allow rule matches (policy allow-list)');
    assert.equal(decideEgress(allowList(), at('example.com')).allowed, false);
  });

  test('wildcards match subdomains at any depth but not the apex or look-alikes', () => {
    const p = allowList({ action: 'allow', host: '*.example.com' });
    assert.equal(decideEgress(p, at('a.example.com')).allowed, true);
    assert.equal(decideEgress(p, at('a.b.example.com')).allowed, true);
    assert.equal(decideEgress(p, at('example.com')).allowed, false);
    assert.equal(decideEgress(p, at('badexample.com')).allowed, false);
    assert.equal(decideEgress(p, at('example.com.evil.test')).allowed, false);
  });

  test('"*" matches any host, IP literals included', () => {
    const p = allowList({ action: 'allow', host: '*', ports: [443] });
    assert.equal(decideEgress(p, at('anything.test')).allowed, true);
    assert.equal(decideEgress(p, at('192.0.2.1')).allowed, true);
    assert.equal(decideEgress(p, at('anything.test', 80)).allowed, false);
  });

  test('deny rules win over allow rules whatever their order', () => {
    const p = allowList({ action: 'allow', host: '*.example.com' }, { action: 'deny', host: 'secret.example.com' });
    const d = decideEgress(p, at('secret.example.com'));
    assert.equal(d.allowed, false);
    assert.equal(d.ruleIndex, 1);
    assert.match(d.reason, /^denied by rules\[1\] "deny secret.example.com"/);
    assert.equal(decideEgress(p, at('public.example.com')).allowed, true);
  });

  test('port rules', () => {
    const p = allowList({ action: 'allow', host: 'example.com', ports: [443, 8443] });
    assert.equal(decideEgress(p, at('example.com', 443)).allowed, true);
    assert.equal(decideEgress(p, at('example.com', 8443)).allowed, true);
    assert.equal(decideEgress(p, at('example.com', 22)).allowed, false);
  });

  test('methods (case-insensitive) and path prefixes per segment, after dot segments', () => {
    const p = allowList({ action: 'allow', host: 'example.com', methods: ['get', 'HEAD'], paths: ['/public', '/docs/'] });
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/public')).allowed, true);
    assert.equal(decideEgress(p, at('example.com', 80, 'head', '/public/a?b=c')).allowed, true);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/docs/x')).allowed, true);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/docs')).allowed, false);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/publicity')).allowed, false);
    assert.equal(decideEgress(p, at('example.com', 80, 'POST', '/public')).allowed, false);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/public/../admin')).allowed, false);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/public/%2e%2e/admin')).allowed, false);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/Public')).allowed, false);
  });

  test('CONNECT (no method/path): allow rules with methods/paths never match, deny rules with them always do', () => {
    const allowOnly = allowList({ action: 'allow', host: 'example.com', methods: ['GET'] });
    const a = decideEgress(allowOnly, at('example.com'));
    assert.equal(a.allowed, false);
    assert.match(a.reason, /do not apply to CONNECT/);
    const p: EgressPolicy = { mode: 'allow-all-public', rules: [{ action: 'deny', host: 'example.com', methods: ['POST'] }] };
    const d = decideEgress(p, at('example.com'));
    assert.equal(d.allowed, false);
    assert.match(d.reason, /cannot be checked inside a CONNECT tunnel/);
    assert.equal(decideEgress(p, at('example.com', 80, 'GET', '/')).allowed, true);
    assert.equal(decideEgress(p, at('example.com', 80, 'POST', '/')).allowed, false);
  });

  test('allow-all-public allows everything not denied', () => {
    const p: EgressPolicy = {
      mode: 'allow-all-public',
      rules: [
        { action: 'deny', host: '*.evil.test' },
        { action: 'allow', host: 'good.test' },
      ],
    };
    const d = decideEgress(p, at('anything.test'));
    assert.deepEqual(d, { allowed: true, reason: 'policy allow-all-public' });
    assert.equal(decideEgress(p, at('good.test')).rule, 'rules[1] "allow good.test"');
    assert.equal(decideEgress(p, at('x.evil.test')).allowed, false);
  });

  test('IP literals compare canonically', () => {
    const p = allowList({ action: 'allow', host: '127.0.0.1' }, { action: 'allow', host: '[2001:DB8::1]' });
    assert.equal(decideEgress(p, at('127.0.0.1')).allowed, true);
    assert.equal(decideEgress(p, at('::ffff:127.0.0.1')).allowed, true);
    assert.equal(decideEgress(p, at('2001:db8:0:0::1')).allowed, true);
    assert.equal(decideEgress(p, at('127.0.0.2')).allowed, false);
  });

  test('an invalid request host is denied, not matched', () => {
    const d = decideEgress({ mode: 'allow-all-public' }, at('evil.test@good.test'));
    assert.equal(d.allowed, false);
    assert.match(d.reason, /not a valid host/);
  });
});
