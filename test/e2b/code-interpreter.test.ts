// The published `@e2b/code-interpreter` SDK (pinned in test/e2b/package.json), unchanged, against Moat's code-interpreter template.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { stripVTControlCharacters } from 'node:util';
import { Sandbox } from '@e2b/code-interpreter';
import { startTestServer, type TestServer } from '../helpers/server.js';

describe('@e2b/code-interpreter against Moat', () => {
  let server: TestServer;
  let sbx: Sandbox;
  before(async () => {
    server = await startTestServer();
    const opts = { apiKey: server.adminKey, apiUrl: server.url, sandboxUrl: server.url };
    // The first start builds the code-interpreter image when setup has not (a few minutes).
    sbx = await Sandbox.create({ ...opts, requestTimeoutMs: 600_000 });
  });
  after(async () => {
    await sbx?.kill().catch(() => {});
    await server.close();
  });

  test('state carries from one runCode to the next', async () => {
    await sbx.runCode('x = 2');
    const r = await sbx.runCode('x * 21');
    assert.equal(r.text, '42');
    assert.equal(r.error, undefined);
    assert.ok(r.executionCount && r.executionCount >= 2);
  });

  test('stdout and stderr are logs, streamed to callbacks', async () => {
    const out: string[] = [];
    const r = await sbx.runCode('import sys\nprint("to out")\nprint("to err", file=sys.stderr)', { onStdout: (m) => void out.push(m.line) });
    assert.deepEqual(r.logs.stdout, ['to out\n']);
    assert.deepEqual(r.logs.stderr, ['to err\n']);
    assert.deepEqual(out, ['to out\n']);
  });

  test('a failing cell gives the error name, value and traceback', async () => {
    const r = await sbx.runCode('def f():\n    raise ValueError("bad input")\nf()');
    assert.equal(r.error?.name, 'ValueError');
    assert.equal(r.error?.value, 'bad input');
    // IPython's traceback, colours and all, as E2B's server passes it on.
    assert.match(stripVTControlCharacters(r.error?.traceback ?? ''), /----> 2 +raise ValueError\("bad input"\)/);
  });

  test('a matplotlib figure is a PNG result; pandas and numpy are there', async () => {
    const r = await sbx.runCode('import matplotlib.pyplot as plt, numpy as np\nplt.plot(np.arange(10) ** 2)\nplt.show()');
    const png = r.results.find((x) => x.png);
    assert.ok(png, `results: ${JSON.stringify(r.results.map((x) => x.formats()))} ${JSON.stringify(r.error)}`);
    assert.deepEqual([...Buffer.from(png.png!, 'base64').subarray(1, 4)].map((c) => String.fromCharCode(c)).join(''), 'PNG');
    const df = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2]})');
    assert.match(df.text ?? '', /a\s+0\s+1\s+1\s+2/);
    assert.ok(df.results[0]?.html?.includes('<table'));
  });

  test('contexts are separate interpreters', async () => {
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' });
    await sbx.runCode('y = "own"', { context: ctx });
    assert.equal((await sbx.runCode('y', { context: ctx })).text, "'own'");
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, "'/tmp'");
    assert.equal((await sbx.runCode('"y" in globals()')).text, 'False');
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
    await sbx.restartCodeContext(ctx);
    assert.equal((await sbx.runCode('"y" in globals()', { context: ctx })).text, 'False');
    await sbx.removeCodeContext(ctx);
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
  });

  test('env vars apply to one run only', async () => {
    const r = await sbx.runCode('import os; os.environ.get("ONLY_NOW")', { envs: { ONLY_NOW: 'yes' } });
    assert.equal(r.text, "'yes'");
    assert.equal((await sbx.runCode('import os; os.environ.get("ONLY_NOW")')).text, undefined);
  });

  test('the sandbox still has envd: commands and files', async () => {
    await sbx.runCode('open("/home/user/out.txt", "w").write("from python")');
    assert.equal(await sbx.files.read('/home/user/out.txt'), 'from python');
    assert.match((await sbx.commands.run('python3 -c "import pandas; print(pandas.__version__)"')).stdout, /^\d+\.\d+/);
  });
});
