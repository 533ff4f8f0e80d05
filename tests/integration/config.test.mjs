// Start and configuration. `-t` accepts the shipped config/jobgate.conf. A
// bad value or an unknown key in a file, the environment or a flag stops the
// start with exit status 1. The message names where the value came from
// (file and line, variable or flag), the key and the value. Environment
// variables override the file and flags override both. Without -c, jobgate
// starts on the built-in defaults plus the environment.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { SHIPPED_CONFIG, closedPort, makeTempDir, runJobgate, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

function writeConfig(text) {
  const file = path.join(makeTempDir('jg-conf-'), 'test.conf');
  fs.writeFileSync(file, text);
  return file;
}

describe('config check (-t)', () => {
  test('shipped config is valid', async () => {
    assert.ok(fs.existsSync(SHIPPED_CONFIG), `${SHIPPED_CONFIG} missing`);
    const res = await runJobgate(['-t', '-c', SHIPPED_CONFIG]);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr, /configuration ok/);
  });

  test('built-in defaults are valid', async () => {
    const res = await runJobgate(['-t']);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr, /configuration ok/);
  });

  test('bad value names file, line, key and value', async () => {
    const file = writeConfig('# test config\nlisten = 127.0.0.1:0\n\nauth_ttl = soon\n');
    const res = await runJobgate(['-t', '-c', file]);
    assert.equal(res.code, 1);
    assert.ok(res.stderr.includes(path.basename(file)), `file not named: ${res.stderr}`);
    assert.match(res.stderr, /(line 4|:4\b)/, `line not named: ${res.stderr}`);
    assert.match(res.stderr, /auth_ttl/);
    assert.match(res.stderr, /soon/);
    assert.doesNotMatch(res.stderr, /configuration ok/);
  });

  const badValues = {
    auth_ttl: 'soon',
    terminal_ttl: '-1',
    share_scope: 'everyone',
    log_level: 'loud',
    upstream_timeout_ms: '10 minutes',
    max_body_bytes: '99999999999999999999999999',
    max_headers: 'many',
    upstream: 'ftp://example.invalid',
  };
  for (const [key, value] of Object.entries(badValues)) {
    test(`bad ${key} in a file`, async () => {
      const file = writeConfig(`${key} = ${value}\n`);
      const res = await runJobgate(['-t', '-c', file]);
      assert.equal(res.code, 1, `${key} = ${JSON.stringify(value)} accepted: ${res.stderr}`);
      assert.match(res.stderr, new RegExp(key), res.stderr);
      if (value !== '') {
        assert.ok(res.stderr.includes(value), `value not named: ${res.stderr}`);
      }
    });
  }

  test('unknown key in a file', async () => {
    const file = writeConfig('listen = 127.0.0.1:0\nno_such_key = 1\n');
    const res = await runJobgate(['-t', '-c', file]);
    assert.equal(res.code, 1);
    assert.match(res.stderr, /no_such_key/);
    assert.match(res.stderr, /(line 2|:2\b)/);
  });

  test('unknown flag', async () => {
    const res = await runJobgate(['-t', '--no_such_key=1']);
    assert.equal(res.code, 1);
    assert.match(res.stderr, /no_such_key/);
  });

  test('unknown environment variable', async () => {
    const res = await runJobgate(['-t'], { env: { JOBGATE_NO_SUCH_KEY: '1' } });
    assert.equal(res.code, 1);
    assert.match(res.stderr, /JOBGATE_NO_SUCH_KEY/);
  });

  test('bad value in the environment', async () => {
    const res = await runJobgate(['-t'], { env: { JOBGATE_AUTH_TTL: 'soon' } });
    assert.equal(res.code, 1);
    assert.match(res.stderr, /JOBGATE_AUTH_TTL/);
    assert.match(res.stderr, /soon/);
  });

  test('bad value in a flag', async () => {
    const res = await runJobgate(['-t', '--max_uri_bytes=lots']);
    assert.equal(res.code, 1);
    assert.match(res.stderr, /max_uri_bytes/);
    assert.match(res.stderr, /lots/);
  });

  test('missing config file', async () => {
    const missing = path.join(makeTempDir('jg-conf-'), 'absent.conf');
    const res = await runJobgate(['-t', '-c', missing]);
    assert.equal(res.code, 1);
    assert.ok(res.stderr.includes(missing), res.stderr);
  });

  test('bad value stops a real start too', async () => {
    const file = writeConfig('listen = 127.0.0.1:0\nadmin_listen =\nshare_scope = everyone\n');
    const res = await runJobgate(['-c', file, `--cache_dir=${makeTempDir('jg-cache-')}`]);
    assert.equal(res.code, 1);
    assert.match(res.stderr, /share_scope/);
    assert.doesNotMatch(res.stderr, / info ready$/m);
  });
});

describe('config layers', () => {
  let up;
  let deadUrl;

  before(async () => {
    up = await startUpstream();
    deadUrl = `http://127.0.0.1:${await closedPort()}`;
  });

  after(async () => {
    await up?.close();
  });

  // Starts jobgate with opts, sends GET /healthcheck through it and returns
  // the status. The upstream count shows where the request went.
  async function healthThrough(opts) {
    const jg = await startJobgate(opts);
    try {
      const res = await jg.get('/healthcheck');
      return res.status;
    } finally {
      await jg.stopChecked();
    }
  }

  function fileWithUpstream(url) {
    return `listen = 127.0.0.1:0\nadmin_listen = 127.0.0.1:0\ncache_dir = ${makeTempDir('jg-cache-')}\nupstream = ${url}\n`;
  }

  test('file alone is used', async () => {
    const before_ = up.routeCount('healthcheck');
    const status = await healthThrough({ defaults: false, config: fileWithUpstream(up.url) });
    assert.equal(status, 200);
    assert.equal(up.routeCount('healthcheck'), before_ + 1);
  });

  test('environment overrides the file', async () => {
    const before_ = up.routeCount('healthcheck');
    const status = await healthThrough({ defaults: false, config: fileWithUpstream(deadUrl), env: { JOBGATE_UPSTREAM: up.url } });
    assert.equal(status, 200);
    assert.equal(up.routeCount('healthcheck'), before_ + 1);

    const reverse = await healthThrough({ defaults: false, config: fileWithUpstream(up.url), env: { JOBGATE_UPSTREAM: deadUrl } });
    assert.equal(reverse, 502);
  });

  test('flags override the environment', async () => {
    const before_ = up.routeCount('healthcheck');
    const status = await healthThrough({
      defaults: false,
      config: fileWithUpstream(deadUrl),
      env: { JOBGATE_UPSTREAM: deadUrl },
      flags: { upstream: up.url },
    });
    assert.equal(status, 200);
    assert.equal(up.routeCount('healthcheck'), before_ + 1);

    const reverse = await healthThrough({
      defaults: false,
      config: fileWithUpstream(up.url),
      env: { JOBGATE_UPSTREAM: up.url },
      flags: { upstream: deadUrl },
    });
    assert.equal(reverse, 502);
  });

  test('no file: defaults plus environment', async () => {
    const before_ = up.routeCount('healthcheck');
    const status = await healthThrough({
      defaults: false,
      env: {
        JOBGATE_LISTEN: '127.0.0.1:0',
        JOBGATE_ADMIN_LISTEN: '127.0.0.1:0',
        JOBGATE_CACHE_DIR: makeTempDir('jg-cache-'),
        JOBGATE_UPSTREAM: up.url,
      },
    });
    assert.equal(status, 200);
    assert.equal(up.routeCount('healthcheck'), before_ + 1);
  });

  test('relative cache_dir default works', async () => {
    // Without cache_dir, jobgate uses "cache" under its working directory.
    const cwd = makeTempDir('jg-cwd-');
    const jg = await startJobgate({
      defaults: false,
      cwd,
      flags: { listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0', upstream: up.url },
    });
    try {
      const res = await jg.get('/healthcheck');
      assert.equal(res.status, 200);
      assert.ok(fs.existsSync(path.join(cwd, 'cache')), 'cache directory created under the working directory');
    } finally {
      await jg.stopChecked();
    }
  });
});
