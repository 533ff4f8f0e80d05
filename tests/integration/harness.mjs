// Test harness: starts and stops the jobgate binary and talks to it.
//
// startJobgate() spawns the binary (JOBGATE_BIN, default <repo>/build/jobgate)
// on ephemeral ports, waits for the "ready" line on stderr instead of
// sleeping, and keeps every stderr line so that tests can check the access
// log and that no credential leaked. The request helpers use node:http with
// a keep-alive agent, raw node:net sockets for malformed or slow requests,
// and the system curl binary as a real client.

import { execFile, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const JOBGATE_BIN = process.env.JOBGATE_BIN ?? path.join(REPO, 'build', 'jobgate');
export const SHIPPED_CONFIG = path.join(REPO, 'config', 'jobgate.conf');

// A wrapper such as valgrind makes start-up many times slower.
const READY_TIMEOUT_MS = process.env.JG_WRAPPER ? 60000 : 10000;
const STOP_TIMEOUT_MS = process.env.JG_WRAPPER ? 60000 : 15000;
const SANITIZER_REPORT = /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|ERROR SUMMARY: [1-9]|definitely lost: [1-9]/;

// JG_WRAPPER runs jobgate under another program, e.g.
// JG_WRAPPER="valgrind --error-exitcode=99 --leak-check=full" node --test.
// Its words are split on spaces.
const WRAPPER = (process.env.JG_WRAPPER ?? '').split(' ').filter((w) => w !== '');
// JG_TEST_WORKERS=N starts every jobgate with workers = N unless a test
// sets workers itself, so that the whole suite can run against N loops.
const TEST_WORKERS = process.env.JG_TEST_WORKERS;

function spawnJobgate(args, options) {
  if (WRAPPER.length === 0) {
    return spawn(JOBGATE_BIN, args, options);
  }
  return spawn(WRAPPER[0], [...WRAPPER.slice(1), JOBGATE_BIN, ...args], options);
}

// Children still running. A test that fails before stopping its jobgate
// must not leave it behind, so they are killed when this process exits.
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    child.kill('SIGKILL');
  }
});

export function makeTempDir(prefix = 'jg-it-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

// The environment for a child: this process's environment without any
// JOBGATE_* variable (jobgate rejects unknown ones, and JOBGATE_BIN is ours),
// plus extra.
function childEnv(extra = {}) {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('JOBGATE_')) {
      env[name] = value;
    }
  }
  return { ...env, ...extra };
}

function flagArgs(flags) {
  return Object.entries(flags)
    .filter(([, value]) => value !== undefined && value !== null)
    .map(([key, value]) => `--${key}=${value}`);
}

// Runs jobgate to completion (for -t and start errors). Resolves with
// {code, signal, stderr, stdout}.
export function runJobgate(args, { env = {}, cwd, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawnJobgate(args, { env: childEnv(env), cwd: cwd ?? makeTempDir() });
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d) => { stderr += d; });
    child.stdout.on('data', (d) => { stdout += d; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`jobgate ${args.join(' ')} still running after ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, stdout });
    });
  });
}

// Starts jobgate and resolves once it logged "ready".
// opts.upstreamUrl: passed as --upstream (null: not passed).
// opts.flags: more --key=value flags, overriding the defaults below.
// opts.env: JOBGATE_* variables. opts.configFile / opts.config (text): -c.
// opts.cacheDir: reuse a cache directory (default: a new temp dir).
// opts.defaults: false to pass only opts.flags (no listen/admin/cache flags).
export async function startJobgate(opts = {}) {
  const cacheDir = opts.cacheDir ?? makeTempDir('jg-cache-');
  const cwd = opts.cwd ?? makeTempDir('jg-cwd-');
  const defaults = opts.defaults === false ? {} : {
    listen: '127.0.0.1:0',
    admin_listen: '127.0.0.1:0',
    cache_dir: cacheDir,
  };
  if (opts.defaults !== false && opts.upstreamUrl) {
    defaults.upstream = opts.upstreamUrl;
  }
  if (opts.defaults !== false && TEST_WORKERS) {
    defaults.workers = TEST_WORKERS;
  }
  const args = [];
  let configFile = opts.configFile;
  if (opts.config !== undefined) {
    configFile = path.join(makeTempDir('jg-conf-'), 'jobgate.conf');
    fs.writeFileSync(configFile, opts.config);
  }
  if (configFile) {
    args.push('-c', configFile);
  }
  args.push(...flagArgs({ ...defaults, ...(opts.flags ?? {}) }));

  const child = spawnJobgate(args, { env: childEnv(opts.env), cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const jg = new Jobgate(child, { cacheDir, args });
  try {
    await jg.ready(opts.readyTimeoutMs ?? READY_TIMEOUT_MS);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return jg;
}

class Jobgate extends EventEmitter {
  constructor(child, { cacheDir, args }) {
    super();
    this.setMaxListeners(1000);
    this.proc = child;
    this.pid = child.pid;
    this.cacheDir = cacheDir;
    this.args = args;
    this.lines = [];
    this.stdout = '';
    this.exited = false;
    this.exitCode = null;
    this.exitSignal = null;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

    // A forgotten child must not keep the test process alive.
    running.add(child);
    child.unref();
    child.stderr.unref();
    child.stdout.unref();

    let pending = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (data) => {
      pending += data;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        this.lines.push(line);
        this.emit('line', line);
      }
    });
    child.stdout.on('data', (d) => { this.stdout += d; });
    this.exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        running.delete(child);
        this.exited = true;
        this.exitCode = code;
        this.exitSignal = signal;
        this.emit('exit');
        resolve(code);
      });
    });
    this.closedPromise = new Promise((resolve) => child.on('close', resolve));
  }

  async ready(timeoutMs) {
    await this.waitForLine((l) => / info ready$/.test(l), timeoutMs);
    for (const line of this.lines) {
      let m = / info listening on http:\/\/([^\s]+):(\d+)$/.exec(line);
      if (m) {
        this.host = m[1];
        this.port = Number(m[2]);
        this.url = `http://${m[1]}:${m[2]}`;
      }
      m = / info listening on unix:(.+)$/.exec(line);
      if (m) {
        this.socketPath = m[1];
      }
      m = / info admin listening on http:\/\/([^\s]+):(\d+)$/.exec(line);
      if (m) {
        this.adminPort = Number(m[2]);
        this.adminUrl = `http://${m[1]}:${m[2]}`;
      }
    }
  }

  get stderr() {
    return this.lines.join('\n');
  }

  // The last n stderr lines, for assertion messages.
  stderrTail(n = 40) {
    return this.lines.slice(-n).join('\n');
  }

  // Resolves with the first line (already seen or future) that satisfies
  // pred; rejects on timeout or when the process exits first.
  waitForLine(pred, timeoutMs = 5000, from = 0) {
    const seen = this.lines.slice(from).find(pred);
    if (seen !== undefined) {
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const onLine = (line) => {
        if (pred(line)) {
          cleanup();
          resolve(line);
        }
      };
      const onExit = () => {
        cleanup();
        reject(new Error(`jobgate exited (code ${this.exitCode}, signal ${this.exitSignal}) before the expected line; stderr:\n${this.stderr}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no matching stderr line within ${timeoutMs} ms; stderr:\n${this.stderr}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('line', onLine);
        this.off('exit', onExit);
      };
      this.on('line', onLine);
      this.on('exit', onExit);
    });
  }

  // Resolves once count lines satisfy pred.
  async waitForLines(pred, count, timeoutMs = 5000) {
    const check = () => this.lines.filter(pred).length >= count;
    if (check()) {
      return;
    }
    await this.waitForLine(() => check(), timeoutMs);
  }

  accessLines() {
    return this.lines.filter((l) => / access /.test(l)).map(parseAccessLine);
  }

  sanitizerReport() {
    return this.lines.filter((l) => SANITIZER_REPORT.test(l));
  }

  kill(signal) {
    if (!this.exited) {
      this.proc.kill(signal);
    }
  }

  // Sends signal (default SIGTERM) and resolves with the exit code. A
  // process still running after STOP_TIMEOUT_MS is killed and the promise
  // rejects.
  async stop(signal = 'SIGTERM') {
    this.agent.destroy();
    if (!this.exited) {
      this.proc.kill(signal);
    }
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        this.proc.kill('SIGKILL');
        reject(new Error(`jobgate did not exit within ${STOP_TIMEOUT_MS} ms of ${signal}`));
      }, STOP_TIMEOUT_MS);
    });
    try {
      return await Promise.race([this.exitPromise, timeout]);
    } finally {
      clearTimeout(timer);
      await this.closedPromise;
    }
  }

  // Stops jobgate and throws if it did not exit 0 or a sanitizer reported an
  // error.
  async stopChecked(signal = 'SIGTERM') {
    const code = await this.stop(signal);
    const reports = this.sanitizerReport();
    if (reports.length > 0) {
      throw new Error(`sanitizer report in jobgate stderr:\n${this.stderr}`);
    }
    if (code !== 0) {
      throw new Error(`jobgate exited with code ${code} (signal ${this.exitSignal}); stderr tail:\n${this.lines.slice(-30).join('\n')}`);
    }
    return code;
  }

  get(target, opts = {}) {
    return this.request(target, { ...opts, method: 'GET' });
  }

  request(target, opts = {}) {
    const where = this.socketPath && !this.port
      ? { socketPath: this.socketPath }
      : { host: '127.0.0.1', port: this.port };
    return httpRequest({ agent: this.agent, ...where, ...opts, path: target });
  }

  admin(target, opts = {}) {
    return httpRequest({ agent: this.agent, host: '127.0.0.1', port: this.adminPort, ...opts, path: target });
  }

  async metrics() {
    const res = await this.admin('/metrics');
    if (res.status !== 200) {
      throw new Error(`GET /metrics returned ${res.status}: ${res.body}`);
    }
    return parseMetrics(res.body);
  }

  // The sum of a metric over all its label sets (0 when absent).
  async metric(name) {
    const all = await this.metrics();
    return all.get(name) ?? 0;
  }

  // Polls /metrics until check(value) holds for metric name. Polling here is
  // observation of jobgate's own state with a deadline, not a sleep.
  async waitForMetric(name, check, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    let value;
    for (;;) {
      value = await this.metric(name);
      if (check(value)) {
        return value;
      }
      if (Date.now() > deadline) {
        throw new Error(`metric ${name} is ${value} after ${timeoutMs} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}

// Parses Prometheus text into a Map from metric name to the sum over labels.
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) {
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m) {
      out.set(m[1], (out.get(m[1]) ?? 0) + Number(m[3]));
    }
  }
  return out;
}

// Parses "... info access k=v k=v ..." into an object of fields.
export function parseAccessLine(line) {
  const fields = { line };
  const rest = line.slice(line.indexOf(' access ') + ' access '.length);
  for (const part of rest.split(' ')) {
    const eq = part.indexOf('=');
    if (eq > 0) {
      fields[part.slice(0, eq)] = part.slice(eq + 1);
    }
  }
  return fields;
}

// One HTTP request with node:http. Resolves with
// {status, headers, body (string), raw (Buffer), json (or undefined)}.
// Options: host, port or socketPath, path (sent verbatim), method, headers,
// body, agent, timeoutMs, onRequest (called with the ClientRequest).
export function httpRequest(opts) {
  const { body, timeoutMs = 15000, ...reqOpts } = opts;
  return new Promise((resolve, reject) => {
    const req = http.request({ method: 'GET', ...reqOpts }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        const text = raw.toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, body: text, raw, json });
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`request ${opts.method ?? 'GET'} ${opts.path} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    if (opts.onRequest) {
      opts.onRequest(req);
    }
    req.end(body);
  });
}

// Sends raw bytes on a new TCP connection and collects everything until
// the peer closes or timeoutMs passes. Resolves with {data, status, closed,
// elapsedMs}.
export function rawExchange(port, data, { timeoutMs = 5000, host = '127.0.0.1' } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = net.connect({ host, port });
    const chunks = [];
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ data: text, status: m ? Number(m[1]) : undefined, closed, elapsedMs: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('data', (c) => chunks.push(c));
    socket.on('end', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('error', (err) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        finish(true);
      } else if (!done) {
        done = true;
        clearTimeout(timer);
        reject(err);
      }
    });
    socket.on('connect', () => {
      if (data !== null && data !== undefined) {
        socket.write(data);
      }
    });
  });
}

// Runs the system curl. Resolves with {status, headers (lower-case names),
// body, json, code}. opts: method, headers {name: value}, data, unixSocket,
// extra (more curl arguments).
export function curl(url, opts = {}) {
  const dir = makeTempDir('jg-curl-');
  const headerFile = path.join(dir, 'headers');
  const bodyFile = path.join(dir, 'body');
  const args = ['-sS', '--max-time', '20', '-D', headerFile, '-o', bodyFile, '-w', '%{http_code}'];
  if (opts.method) args.push('-X', opts.method);
  for (const [name, value] of Object.entries(opts.headers ?? {})) {
    args.push('-H', `${name}: ${value}`);
  }
  if (opts.data !== undefined) args.push('--data-binary', opts.data);
  if (opts.unixSocket) args.push('--unix-socket', opts.unixSocket);
  args.push(...(opts.extra ?? []), url);
  return new Promise((resolve, reject) => {
    execFile('curl', args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && !fs.existsSync(headerFile)) {
        reject(new Error(`curl failed: ${stderr || err.message}`));
        return;
      }
      const headers = {};
      const headerText = fs.readFileSync(headerFile, 'utf8');
      for (const line of headerText.split('\r\n').slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) {
          headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
        }
      }
      const body = fs.existsSync(bodyFile) ? fs.readFileSync(bodyFile, 'utf8') : '';
      let json;
      try {
        json = JSON.parse(body);
      } catch {
        json = undefined;
      }
      fs.rmSync(dir, { recursive: true, force: true });
      resolve({ status: Number(stdout), headers, body, json, code: err ? err.code : 0 });
    });
  });
}

// A port on 127.0.0.1 that was free a moment ago and has no listener now.
export async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export const JOB_PATH = (id) => `/v2/org-jobs/${id}`;
export const PUBLIC_JOB_PATH = (id) => `/public/v2/org-jobs/${id}`;

// Header object for a fixture key name: Galileo-API-Key.
export function keyHeader(up, name) {
  return { 'Galileo-API-Key': up.keys[name] };
}
