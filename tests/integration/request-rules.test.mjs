// Rules that keep jobgate and the upstream reading a request the same way:
// field names must be tokens, a credential header may appear once, the
// credential a cached answer is served to is exactly the one the upstream
// checked, a string proven in one credential header proves nothing in
// another, every Cache-Control line of an upstream answer counts, and a
// request target with spaces or control bytes is rejected before it can
// reach the upstream or the log.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, rawExchange, startJobgate } from './harness.mjs';
import { KEYS, startUpstream } from './upstream.mjs';

const HIT = 'jobgate; hit';

describe('request rules', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  const raw = (lines) => rawExchange(jg.port, `${lines.join('\r\n')}\r\n\r\n`);

  test('space before a colon is rejected', async () => {
    const before = up.requests.length;
    const res = await raw([
      'POST /echo/x HTTP/1.1',
      'Host: x',
      'Transfer-Encoding : chunked',
      'Content-Length: 29',
      '',
      '0',
      '',
      'GET /smuggled HTTP/1.1',
    ]);
    assert.equal(res.status, 400);
    assert.equal(up.requests.length, before, 'the upstream saw nothing');
  });

  test('repeated credential header is rejected', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const res = await raw([
      `GET ${JOB_PATH(x)} HTTP/1.1`,
      'Host: x',
      'Galileo-API-Key: not-a-key',
      `Galileo-API-Key: ${KEYS.A1}`,
      'Connection: close',
    ]);
    assert.equal(res.status, 400);
    assert.equal(up.jobCount(x), 0);
  });

  test('hop-by-hop credential proves nothing', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const token = up.login('A1');
    const forged = 'not-a-real-key';

    // The key is listed in Connection, so it is not the credential: the
    // Bearer token is, and it alone goes upstream.
    const first = await jg.get(JOB_PATH(x), {
      headers: {
        'Galileo-API-Key': forged,
        Authorization: `Bearer ${token}`,
        Connection: 'Galileo-API-Key',
      },
    });
    assert.equal(first.status, 200);
    const seen = up.requests.filter((r) => r.jobId === x).at(-1);
    assert.equal(seen.headers['galileo-api-key'], undefined);
    assert.equal(seen.headers.authorization, `Bearer ${token}`);

    const second = await jg.get(JOB_PATH(x), { headers: { 'Galileo-API-Key': forged } });
    assert.equal(second.status, 401);
    assert.notEqual(second.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);
  });

  test('only the chosen credential goes upstream', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const token = up.login('A1');
    await jg.get(JOB_PATH(x), {
      headers: { 'Galileo-API-Key': 'not-a-real-key', Authorization: `Bearer ${token}` },
    });
    const seen = up.requests.filter((r) => r.jobId === x).at(-1);
    assert.equal(seen.headers['galileo-api-key'], 'not-a-real-key');
    assert.equal(seen.headers.authorization, undefined);
  });

  test('key proven as key is not a token', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const stored = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(stored.status, 200);
    assert.equal(up.jobCount(x), 1);

    const asBearer = await jg.get(JOB_PATH(x), {
      headers: { Authorization: `Bearer ${KEYS.A1}` },
    });
    assert.notEqual(asBearer.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);

    // The 401 the token form earned does not undo the key's proof.
    const again = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(again.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);
  });

  test('long credential header is forwarded', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const jgBig = await startJobgate({ upstreamUrl: up.url, flags: { max_header_bytes: 65536 } });
    try {
      const longKey = 'k'.repeat(20000);
      const res = await jgBig.get(JOB_PATH(x), { headers: { 'Galileo-API-Key': longKey } });
      assert.equal(res.status, 401);
      const seen = up.requests.filter((r) => r.jobId === x).at(-1);
      assert.equal(seen.headers['galileo-api-key'], longKey);
    } finally {
      await jgBig.stopChecked();
    }
  });

  test('no-store on a second line counts', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: x, kind: 'no-store', value: ['public', 'no-store'] });
    const first = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(first.status, 200);
    assert.match(first.headers['cache-status'], /detail=no-store/);

    const second = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.notEqual(second.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);
  });

  test('body larger than the first read is relayed', async () => {
    // The head arrives before most of the body, so the input buffer grows
    // after the head was parsed.
    for (const size of [999, 5000, 300000]) {
      const body = 'b'.repeat(size);
      const res = await jg.request('/echo/grow', { method: 'POST', body });
      assert.equal(res.status, 200, `size ${size}`);
      assert.equal(res.json.method, 'POST');
      assert.equal(res.json.path, '/echo/grow');
      assert.equal(Buffer.from(res.json.body, 'base64').toString(), body, `size ${size}`);
    }
  });

  test('space in the target is rejected', async () => {
    const before = up.requests.length;
    const res = await raw([
      'GET /echo/x status=200 cred=deadbeef HTTP/1.1',
      'Host: x',
      'Connection: close',
    ]);
    assert.equal(res.status, 400);
    assert.equal(up.requests.length, before);
    assert.ok(!jg.lines.some((l) => l.includes('cred=deadbeef')), 'the log shows no client-made fields');
  });
});
