// Rules that keep jobgate and the upstream reading a request the same way:
// field names must be tokens, a credential header may appear once, the
// credential a cached answer is served to is exactly the one the upstream
// checked, a string proven in one credential header proves nothing in
// another, every Cache-Control line of an upstream answer counts, and a
// request target with spaces or control bytes is rejected before it can
// reach the upstream or the log.

import assert from 'node:assert/strict';
import net from 'node:net';
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

  test('unread pipelined answers stop reading', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    const before = await jg.metric('jobgate_requests_total');
    const count = 100000;
    const one = `GET ${JOB_PATH(x)} HTTP/1.1\r\nHost: x\r\nGalileo-API-Key: ${KEYS.A1}\r\n\r\n`;
    const socket = net.connect(jg.port, '127.0.0.1');
    socket.pause(); // never read the answers
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(one.repeat(count));

    // Wait until jobgate answers no more; then far fewer than all were
    // answered, because it stopped reading while its answers were unsent.
    let last = -1;
    let now = await jg.metric('jobgate_requests_total');
    for (let i = 0; i < 100 && now !== last; i++) {
      last = now;
      await jg.waitForMetric('jobgate_requests_total', (v) => v >= last, 5000);
      await new Promise((resolve) => setImmediate(resolve));
      now = await jg.metric('jobgate_requests_total');
    }
    const answered = now - before;
    console.log(`# ${answered} of ${count} pipelined requests answered while the client read nothing`);
    assert.ok(answered < count, `all ${count} answered: nothing held them back`);
    socket.destroy();
  });

  test('HTTP/1.0 gets no 100 Continue', async () => {
    const res = await rawExchange(jg.port, 'POST /echo/x HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc');
    assert.equal(res.status, 200);
    assert.ok(!res.data.includes('100 Continue'), res.data.slice(0, 200));
  });

  test('HEAD answer states no length', async () => {
    const res = await rawExchange(jg.port, 'HEAD /echo/h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(res.status, 200);
    assert.ok(!/content-length: 0\r\n/i.test(res.data), res.data.slice(0, 300));
  });

  test('bare LF is rejected at once', async () => {
    const before = up.requests.length;
    // rawExchange gives up after 5 s, before the 10 s request deadline,
    // so only an answer given at once passes.
    const res = await rawExchange(jg.port, 'GET /echo/x HTTP/1.1\nHost: x\n\n');
    assert.equal(res.status, 400);
    assert.equal(up.requests.length, before);
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
