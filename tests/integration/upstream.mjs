// Scripted Galileo upstream for the integration tests.
//
// It serves the part of the Galileo API that jobgate sits in front of:
// GET /v2/org-jobs/{job_id} and its /public alias, POST
// /v2/org-jobs/delete-by-metadata, POST /login/api_key and GET /healthcheck.
// Job ids are parsed the way FastAPI + pydantic v2 UUID4 parses them, and
// jobs are returned as OrgJobDB objects. Several organizations and several
// API keys per organization are fixed below. As on the real service, the
// credential decides the organization.
//
// Every request is counted and logged with its headers, so a test can assert
// how many requests got past jobgate and what they carried. Faults are
// injected per job, route or path, once or sticky. They include a hold that
// the test releases, so clients pile up behind one fetch without sleeps.
// Others reset the connection, truncate or garble the response, return 5xx
// or 429, or send bodies that must not be cached. An /echo/* route returns
// what it received, for pass-through tests.
//
// Run standalone with `node upstream.mjs [--port N]`. It prints its URL, the
// keys and a few sample jobs.

import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import { pathToFileURL } from 'node:url';

export const ORGS = Object.freeze({
  A: '3f0c9a52-6d1e-4b7a-9c2e-0a1b2c3d4e5f',
  B: '7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d',
  C: 'c1d2e3f4-a5b6-4c7d-9e8f-0a1b2c3d4e5a',
});

// API keys by fixture name: the first letter is the organization. The values
// are long and distinctive so that a leak check can search logs for them.
export const KEYS = Object.freeze({
  A1: 'gk_A1_5b1f0e7c2d9a4e8f9b3c6d1a7e2f4c8b',
  A2: 'gk_A2_0c6e2b8d4f1a7c3e9d5b1f7a3c9e5d1b',
  A3: 'gk_A3_9e4a0c6b2d8f4a1c7e3b9d5f1a7c3e9d',
  A4: 'gk_A4_2d7f3b9e5a1c7d3f9b5e1a7c3d9f5b1e',
  B1: 'gk_B1_6a2c8e4b0d6f2a8c4e0b6d2f8a4c0e6b',
  B2: 'gk_B2_1f7b3d9a5c1e7b3f9d5a1c7e3b9f5d1a',
  C1: 'gk_C1_8c4e0a6d2b8f4c0e6a2d8b4f0c6e2a8d',
});

const MAX_REQUEST_BODY = 32 * 1024 * 1024;
const DRIP_MAX_BYTES = 20000;
const FLOOD_MAX_BYTES = 64 * 1024 * 1024;
const FLOOD_CHUNK_BYTES = 64 * 1024;
const TOKEN_LIFETIME_S = 3600;

const HYPHENATED = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const SIMPLE = /^[0-9a-fA-F]{32}$/;

// Parses a path segment as pydantic v2 UUID4 does for FastAPI path
// parameters: hyphenated in any case, 32 hex digits, {hyphenated}, or
// urn:uuid: + hyphenated with a lower-case prefix. Returns {id} with the
// canonical lower-case spelling, or {error} with the pydantic error type.
export function parseUuid4(text) {
  let body = null;
  if (HYPHENATED.test(text)) {
    body = text;
  } else if (SIMPLE.test(text)) {
    body = text;
  } else if (text.length === 38 && text[0] === '{' && text[37] === '}' && HYPHENATED.test(text.slice(1, 37))) {
    body = text.slice(1, 37);
  } else if (text.startsWith('urn:uuid:') && HYPHENATED.test(text.slice(9))) {
    body = text.slice(9);
  }
  if (body === null) {
    const reason = /^[0-9a-fA-F{}urn:-]*$/.test(text) ? 'invalid length' : 'invalid character';
    return { error: 'uuid_parsing', reason };
  }

  const hex = body.replace(/-/g, '').toLowerCase();
  const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  if (hex[12] !== '4' || !'89ab'.includes(hex[16])) {
    return { error: 'uuid_version', id };
  }
  return { id };
}

// Decodes %XX escapes the way Python's urllib.parse.unquote does: malformed
// escapes stay as they are, bytes are read as UTF-8.
function unquote(text) {
  if (!text.includes('%')) {
    return text;
  }
  const bytes = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '%' && /^[0-9a-fA-F]{2}$/.test(text.slice(i + 1, i + 3))) {
      bytes.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      for (const b of Buffer.from(ch, 'utf8')) {
        bytes.push(b);
      }
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function base64url(text) {
  return Buffer.from(text).toString('base64url');
}

// A gate holds responses until release(). Tests await arrivals to know that a
// request reached the upstream, instead of sleeping.
export function createGate() {
  const events = new EventEmitter();
  let open;
  const opened = new Promise((resolve) => {
    open = resolve;
  });
  const gate = {
    released: false,
    arrivals: 0,
    wait() {
      gate.arrivals += 1;
      events.emit('arrival');
      return opened;
    },
    release() {
      gate.released = true;
      open();
    },
    waitArrivals(n, timeoutMs = 5000) {
      return waitForCondition(events, 'arrival', () => gate.arrivals >= n, timeoutMs,
        () => `gate saw ${gate.arrivals} of ${n} arrivals`);
    },
  };
  return gate;
}

function waitForCondition(emitter, eventName, check, timeoutMs, describe) {
  if (check()) {
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const onEvent = () => {
      if (check()) {
        cleanup();
        resolve();
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms: ${describe()}`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(eventName, onEvent);
    };
    emitter.on(eventName, onEvent);
  });
}

function isoNow(offsetMs = 0) {
  const d = new Date(Date.now() + offsetMs).toISOString();
  return `${d.slice(0, 23)}${String(Math.floor(Math.random() * 1000)).padStart(3, '0')}Z`;
}

// Serializes an OrgJobDB object with the field order of the real service.
export function serializeJob(job) {
  return JSON.stringify({
    id: job.id,
    organization_id: job.organization_id,
    job_name: job.job_name,
    status: job.status,
    request_data: job.request_data,
    error_message: job.error_message,
    created_by: job.created_by,
    created_at: job.created_at,
    updated_at: job.updated_at,
  });
}

function jsonPlan(status, value, headers = {}) {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)),
  };
}

function routeOf(path) {
  if (path === '/healthcheck') return 'healthcheck';
  if (path === '/login/api_key') return 'login';
  if (path === '/v2/org-jobs/delete-by-metadata') return 'delete-by-metadata';
  if (path.startsWith('/v2/org-jobs/')) return 'job';
  if (path.startsWith('/public/v2/org-jobs/')) return 'public-job';
  if (path.startsWith('/echo/') || path === '/echo') return 'echo';
  return 'other';
}

const NEXT_STATUS = {
  unstarted: 'in_progress',
  in_progress: 'processed',
  processed: 'completed',
};

const BODY_TRANSFORMS = {
  // Two complete JSON objects back to back in one 200.
  concat: (plan) => ({ ...plan, body: Buffer.concat([plan.body, plan.body]) }),

  // Top-level "status" twice. A parser that keeps the last one reads completed.
  'duplicate-status': (plan) => {
    const text = plan.body.toString();
    return { ...plan, body: Buffer.from(`{"status":"in_progress",${text.slice(1)}`) };
  },

  // The body names another job.
  'other-id': (plan, fault) => {
    const job = JSON.parse(plan.body);
    job.id = fault.otherId ?? crypto.randomUUID();
    return { ...plan, body: Buffer.from(serializeJob(job)) };
  },

  // No top-level status; "completed" appears only inside request_data.
  'status-only-in-request-data': (plan) => {
    const job = JSON.parse(plan.body);
    delete job.status;
    job.request_data = { ...job.request_data, status: 'completed' };
    return { ...plan, body: Buffer.from(JSON.stringify(job)) };
  },

  'org-not-uuid': (plan) => {
    const job = JSON.parse(plan.body);
    job.organization_id = 'org-a';
    return { ...plan, body: Buffer.from(serializeJob(job)) };
  },

  'no-store': (plan, fault) => ({
    ...plan,
    headers: { ...plan.headers, 'cache-control': fault.value ?? 'no-store' },
  }),

  // Arbitrary replacement of the body and extra headers.
  body: (plan, fault) => ({
    ...plan,
    headers: { ...plan.headers, ...(fault.headers ?? {}) },
    body: Buffer.from(fault.body),
  }),
};

const SOCKET_FAULTS = new Set(['reset', 'reset-mid-body', 'truncate', 'garbage', 'drip', 'flood']);

function statusText(code) {
  return http.STATUS_CODES[code] ?? 'Unknown';
}

function rawHead(plan, overrideLength) {
  const lines = [`HTTP/1.1 ${plan.status} ${statusText(plan.status)}`];
  for (const [name, value] of Object.entries(plan.headers)) {
    lines.push(`${name}: ${value}`);
  }
  lines.push(`content-length: ${overrideLength ?? plan.body.length}`);
  return `${lines.join('\r\n')}\r\n\r\n`;
}

// Starts the scripted upstream on 127.0.0.1 (port 0 unless opts.port).
// opts.crossOrgStatus: 404 (default) or 403 for a job of another org.
export async function startUpstream(opts = {}) {
  const crossOrgStatus = opts.crossOrgStatus ?? 404;
  const events = new EventEmitter();
  events.setMaxListeners(1000);
  const jobs = new Map();
  const tokens = new Map();
  const revokedKeys = new Set();
  const revokedTokens = new Set();
  const keyOrg = new Map(Object.entries(KEYS).map(([name, key]) => [key, ORGS[name[0]]]));
  const tokenSecret = crypto.randomBytes(32);
  const sockets = new Set();
  const timers = new Set();
  let faults = [];

  const counts = {
    total: 0,
    byMethodPath: new Map(),
    byRoute: new Map(),
    byJob: new Map(),
  };
  const requests = [];

  function bump(map, key) {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  function issueToken(key) {
    const now = Math.floor(Date.now() / 1000);
    const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const payload = base64url(JSON.stringify({
      sub: crypto.createHash('sha256').update(key).digest('hex').slice(0, 16),
      org: keyOrg.get(key),
      iat: now,
      exp: now + TOKEN_LIFETIME_S,
      jti: crypto.randomUUID(),
    }));
    const signature = crypto.createHmac('sha256', tokenSecret).update(`${header}.${payload}`).digest('base64url');
    const token = `${header}.${payload}.${signature}`;
    tokens.set(token, { org: keyOrg.get(key), key });
    return { token, expiresAt: now + TOKEN_LIFETIME_S };
  }

  // Returns {org} for a valid credential, or {error: plan} for a 401.
  function authenticate(headers) {
    const key = headers['galileo-api-key'] ?? headers['splunk-ao-api-key'];
    if (key !== undefined) {
      if (!keyOrg.has(key) || revokedKeys.has(key)) {
        return { error: jsonPlan(401, { detail: 'Invalid API key' }) };
      }
      return { org: keyOrg.get(key), credential: key };
    }

    const auth = headers.authorization;
    const match = auth === undefined ? null : /^\s*bearer\s+(\S+)\s*$/i.exec(auth);
    if (match === null) {
      return { error: jsonPlan(401, { detail: 'Not authenticated' }, { 'www-authenticate': 'Bearer' }) };
    }
    const entry = tokens.get(match[1]);
    if (entry === undefined || revokedTokens.has(match[1]) || revokedKeys.has(entry.key)) {
      return { error: jsonPlan(401, { detail: 'Could not validate credentials' }, { 'www-authenticate': 'Bearer' }) };
    }
    return { org: entry.org, credential: match[1] };
  }

  function validationError(segment, parsed) {
    if (parsed.error === 'uuid_version') {
      return jsonPlan(422, {
        detail: [{
          type: 'uuid_version',
          loc: ['path', 'job_id'],
          msg: 'UUID version 4 expected',
          input: segment,
          ctx: { expected_version: 4 },
        }],
      });
    }
    return jsonPlan(422, {
      detail: [{
        type: 'uuid_parsing',
        loc: ['path', 'job_id'],
        msg: `Input should be a valid UUID, ${parsed.reason}`,
        input: segment,
        ctx: { error: parsed.reason },
      }],
    });
  }

  function jobRoute(req, info) {
    const prefix = info.route === 'job' ? '/v2/org-jobs/' : '/public/v2/org-jobs/';
    const rest = info.decodedPath.slice(prefix.length);

    // Starlette redirects a trailing slash when the path without it matches.
    if (rest.endsWith('/') && rest.length > 1 && !rest.slice(0, -1).includes('/')) {
      const location = `http://${req.headers.host ?? '127.0.0.1'}${info.rawPath.slice(0, -1)}${info.rawQuery}`;
      return { status: 307, headers: { location }, body: Buffer.alloc(0) };
    }
    if (rest === '' || rest.includes('/')) {
      return jsonPlan(404, { detail: 'Not Found' });
    }
    if (req.method !== 'GET') {
      return jsonPlan(405, { detail: 'Method Not Allowed' }, { allow: 'GET' });
    }

    // FastAPI resolves the security dependency before validating the path.
    const auth = authenticate(req.headers);
    if (auth.error) {
      return auth.error;
    }
    const parsed = parseUuid4(rest);
    if (parsed.error) {
      return validationError(rest, parsed);
    }
    const job = jobs.get(parsed.id);
    if (job === undefined) {
      return jsonPlan(404, { detail: 'Job not found' });
    }
    if (job.organization_id !== auth.org) {
      return crossOrgStatus === 403
        ? jsonPlan(403, { detail: 'Not authorized to access this job' })
        : jsonPlan(404, { detail: 'Job not found' });
    }
    return jsonPlan(200, job.rawBody ?? serializeJob(job));
  }

  function loginRoute(req, body) {
    if (req.method !== 'POST') {
      return jsonPlan(405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
    }
    let parsed;
    try {
      parsed = JSON.parse(body.toString());
    } catch {
      return jsonPlan(422, { detail: [{ type: 'json_invalid', loc: ['body'], msg: 'JSON decode error' }] });
    }
    const key = parsed?.api_key;
    if (typeof key !== 'string' || !keyOrg.has(key) || revokedKeys.has(key)) {
      return jsonPlan(401, { detail: 'Invalid API key' });
    }
    const { token, expiresAt } = issueToken(key);
    return jsonPlan(200, { access_token: token, token_type: 'bearer', expires_at: expiresAt });
  }

  function deleteByMetadataRoute(req, body) {
    if (req.method !== 'POST') {
      return jsonPlan(405, { detail: 'Method Not Allowed' }, { allow: 'POST' });
    }
    const auth = authenticate(req.headers);
    if (auth.error) {
      return auth.error;
    }
    let parsed;
    try {
      parsed = JSON.parse(body.toString());
    } catch {
      return jsonPlan(422, { detail: [{ type: 'json_invalid', loc: ['body'], msg: 'JSON decode error' }] });
    }
    if (typeof parsed?.metadata_key !== 'string' || typeof parsed?.metadata_value !== 'string') {
      return jsonPlan(422, { detail: [{ type: 'missing', loc: ['body', 'metadata_key'], msg: 'Field required' }] });
    }
    const orgName = Object.keys(ORGS).find((name) => ORGS[name] === auth.org);
    const id = api.createJob({
      org: orgName,
      status: 'unstarted',
      requestData: { metadata_key: parsed.metadata_key, metadata_value: parsed.metadata_value },
    });
    return jsonPlan(200, { job_id: id, message: 'Deletion job created' });
  }

  function echoRoute(req, info, body) {
    return jsonPlan(200, {
      method: req.method,
      path: info.rawPath,
      query: info.rawQuery,
      headers: req.headers,
      body: body.toString('base64'),
    }, { 'x-echo-route': 'yes', 'set-cookie': 'echo=1; Path=/' });
  }

  function plan(req, info, body) {
    switch (info.route) {
      case 'healthcheck':
        return req.method === 'GET'
          ? jsonPlan(200, { api_version: 'v2', message: 'ok', version: '2.0.0-scripted' })
          : jsonPlan(405, { detail: 'Method Not Allowed' }, { allow: 'GET' });
      case 'login':
        return loginRoute(req, body);
      case 'delete-by-metadata':
        return deleteByMetadataRoute(req, body);
      case 'job':
      case 'public-job':
        return jobRoute(req, info);
      case 'echo':
        return echoRoute(req, info, body);
      default:
        return jsonPlan(404, { detail: 'Not Found' });
    }
  }

  function findFault(info, method) {
    const fault = faults.find((f) => f.remaining > 0
      && (f.job === undefined || f.job === info.jobId)
      && (f.route === undefined || f.route === info.route)
      && (f.path === undefined || f.path === info.rawPath)
      && (f.method === undefined || f.method === method));
    if (fault !== undefined) {
      fault.remaining -= 1;
      fault.hits += 1;
    }
    return fault;
  }

  function sendPlan(res, p) {
    res.writeHead(p.status, { ...p.headers, 'content-length': p.body.length });
    res.end(p.body);
  }

  function sendSocketFault(req, res, p, fault) {
    const socket = req.socket;
    switch (fault.kind) {
      case 'reset':
        socket.resetAndDestroy();
        return;
      case 'reset-mid-body': {
        const half = p.body.subarray(0, Math.floor(p.body.length / 2));
        socket.write(Buffer.concat([Buffer.from(rawHead(p)), half]), () => socket.resetAndDestroy());
        return;
      }
      case 'truncate':
        socket.end(Buffer.concat([Buffer.from(rawHead(p, p.body.length + 100)), p.body]));
        return;
      case 'garbage':
        socket.end(Buffer.concat([
          Buffer.from('SPAM/9.9 \x00\xff\xfe garbage that is not HTTP\r\n{"id":'),
          crypto.randomBytes(64),
        ]));
        return;
      case 'drip':
        drip(res, p, fault);
        return;
      case 'flood':
        flood(res, p, fault);
        return;
      default:
        throw new Error(`unknown socket fault ${fault.kind}`);
    }
  }

  // Sends the head without Content-Length, then a chunked body without end
  // as fast as the connection takes it: the job body without its closing
  // brace, then spaces. It stops when the connection closes or after
  // fault.maxBytes (default FLOOD_MAX_BYTES), and then resets the connection
  // so that the body never ends well. fault.sentBytes counts the body bytes
  // written, so a test can tell how much the client read before it hung up.
  function flood(res, p, fault) {
    const maxBytes = fault.maxBytes ?? FLOOD_MAX_BYTES;
    const filler = Buffer.alloc(FLOOD_CHUNK_BYTES, 0x20);
    res.writeHead(p.status, { ...p.headers });
    const opening = p.body.subarray(0, Math.max(0, p.body.length - 1));
    fault.sentBytes = opening.length;
    res.write(opening);
    const pump = () => {
      while (!res.destroyed && fault.sentBytes < maxBytes) {
        fault.sentBytes += filler.length;
        if (!res.write(filler)) {
          res.once('drain', pump);
          return;
        }
      }
      res.destroy();
    };
    pump();
  }

  // Sends the body one byte per fault.intervalMs. With fault.endless the
  // bytes are whitespace without end; the drip stops at DRIP_MAX_BYTES or
  // when the connection closes, so it is bounded either way.
  function drip(res, p, fault) {
    const intervalMs = fault.intervalMs ?? 50;
    const headers = { ...p.headers };
    if (!fault.endless) {
      headers['content-length'] = p.body.length;
    }
    res.writeHead(p.status, headers);
    let sent = 0;
    const timer = setInterval(() => {
      if (res.destroyed || sent >= DRIP_MAX_BYTES) {
        clearInterval(timer);
        timers.delete(timer);
        res.destroy();
        return;
      }
      if (fault.endless) {
        res.write(' ');
        sent += 1;
        return;
      }
      res.write(p.body.subarray(sent, sent + 1));
      sent += 1;
      if (sent >= p.body.length) {
        clearInterval(timer);
        timers.delete(timer);
        res.end();
      }
    }, intervalMs);
    timers.add(timer);
    res.on('close', () => {
      clearInterval(timer);
      timers.delete(timer);
    });
  }

  function describeRequest(req) {
    let target = req.url;
    if (/^[a-z]+:\/\//i.test(target)) {
      const parsed = new URL(target);
      target = `${parsed.pathname}${parsed.search}`;
    }
    const q = target.indexOf('?');
    const rawPath = q < 0 ? target : target.slice(0, q);
    const rawQuery = q < 0 ? '' : target.slice(q);
    const decodedPath = unquote(rawPath);
    const route = routeOf(decodedPath);
    let jobId;
    if (route === 'job' || route === 'public-job') {
      const prefix = route === 'job' ? '/v2/org-jobs/' : '/public/v2/org-jobs/';
      const segment = decodedPath.slice(prefix.length);
      const parsed = parseUuid4(segment);
      jobId = parsed.id ?? segment;
    }
    return { rawPath, rawQuery, decodedPath, route, jobId };
  }

  async function handle(req, res) {
    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
      size += chunk.length;
      if (size > MAX_REQUEST_BODY) {
        sendPlan(res, jsonPlan(413, { detail: 'Request body too large' }));
        return;
      }
      chunks.push(chunk);
    }
    const body = Buffer.concat(chunks);
    const info = describeRequest(req);

    counts.total += 1;
    bump(counts.byMethodPath, `${req.method} ${info.rawPath}`);
    bump(counts.byRoute, info.route);
    if (info.jobId !== undefined) {
      bump(counts.byJob, info.jobId);
    }
    const entry = {
      method: req.method,
      url: req.url,
      path: info.rawPath,
      query: info.rawQuery,
      route: info.route,
      jobId: info.jobId,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      httpVersion: req.httpVersion,
      body,
    };
    requests.push(entry);
    events.emit('request', entry);

    const fault = findFault(info, req.method);
    // With planFirst the response is made on arrival and only its sending
    // waits for the gate, as when a response is slow on the wire: a key
    // revoked meanwhile does not change it.
    let p = fault?.planFirst ? plan(req, info, body) : undefined;
    if (fault?.gate) {
      await fault.gate.wait();
      if (res.destroyed) {
        return;
      }
    }

    p ??= plan(req, info, body);
    if (fault === undefined || fault.kind === undefined || fault.kind === 'hold') {
      sendPlan(res, p);
      return;
    }
    if (fault.kind === 'status') {
      const detail = fault.detail ?? statusText(fault.status);
      sendPlan(res, jsonPlan(fault.status, { detail }, fault.headers ?? {}));
      return;
    }
    if (fault.kind === 'rate-limit') {
      sendPlan(res, jsonPlan(429, { detail: 'Too Many Requests' }, { 'retry-after': String(fault.retryAfter ?? 7) }));
      return;
    }
    if (SOCKET_FAULTS.has(fault.kind)) {
      sendSocketFault(req, res, p, fault);
      return;
    }
    const transform = BODY_TRANSFORMS[fault.kind];
    if (transform === undefined) {
      throw new Error(`unknown fault kind ${fault.kind}`);
    }
    if (p.status === 200 || fault.kind === 'body') {
      p = transform(p, fault);
    }
    sendPlan(res, p);
  }

  // Large enough for the longest header the tests send (Node's default is 16 KiB).
  const server = http.createServer({ maxHeaderSize: 65536 }, (req, res) => {
    handle(req, res).catch((err) => {
      process.stderr.write(`upstream: handler failed: ${err.stack}\n`);
      res.destroy();
    });
  });

  // Longer than any test so that a pooled connection is never closed by the
  // upstream while jobgate reuses it.
  server.keepAliveTimeout = 120000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve);
  });
  const port = server.address().port;

  const api = {
    port,
    url: `http://127.0.0.1:${port}`,
    orgs: ORGS,
    keys: KEYS,
    counts,
    requests,
    events,

    // Creates a job and returns its id. org is a fixture name (A, B, C).
    createJob({ org = 'A', status = 'completed', requestData, errorMessage = null, id } = {}) {
      const jobId = id ?? crypto.randomUUID();
      const created = isoNow(-60000);
      jobs.set(jobId, {
        id: jobId,
        organization_id: ORGS[org],
        job_name: 'delete_by_metadata',
        status,
        request_data: requestData ?? {
          metadata_key: 'customer_id',
          metadata_value: `cust-${jobId.slice(0, 8)}`,
          scope: { include_traces: true, include_sessions: true, project_ids: [] },
          dry_run: false,
        },
        error_message: errorMessage,
        created_by: crypto.randomUUID(),
        created_at: created,
        updated_at: created,
      });
      return jobId;
    },

    job(id) {
      return jobs.get(id);
    },

    // The exact body a GET for this job returns without faults.
    jobBody(id) {
      const job = jobs.get(id);
      return job.rawBody ?? serializeJob(job);
    },

    setStatus(id, status) {
      const job = jobs.get(id);
      job.status = status;
      job.updated_at = isoNow();
    },

    // Moves a job one step: unstarted, in_progress, processed, completed.
    advance(id) {
      const job = jobs.get(id);
      const next = NEXT_STATUS[job.status];
      if (next === undefined) {
        throw new Error(`job ${id} is ${job.status} and cannot advance`);
      }
      api.setStatus(id, next);
      return next;
    },

    updateJob(id, patch) {
      Object.assign(jobs.get(id), patch);
    },

    // Replaces the serialized body of a job (null restores the default).
    setRawBody(id, text) {
      jobs.get(id).rawBody = text ?? undefined;
    },

    login(name) {
      return issueToken(KEYS[name]).token;
    },

    revokeKey(name) {
      revokedKeys.add(KEYS[name]);
    },

    restoreKey(name) {
      revokedKeys.delete(KEYS[name]);
    },

    revokeToken(token) {
      revokedTokens.add(token);
    },

    // Adds a fault. Matchers: job (canonical id), route, path (raw, without
    // query), method. times: how many matching requests it applies to
    // (default 1; Infinity for sticky). gate: hold matching requests until
    // gate.release(); with planFirst the response is made before the gate
    // delays it. kind: undefined (hold only), status, rate-limit,
    // reset, reset-mid-body, truncate, garbage, drip, flood, concat,
    // duplicate-status, other-id, status-only-in-request-data, org-not-uuid,
    // no-store, body.
    addFault(spec) {
      const fault = { times: 1, ...spec, hits: 0 };
      fault.remaining = fault.times;
      faults.push(fault);
      return fault;
    },

    // Holds matching requests until the returned gate is released.
    hold(match, times = 1) {
      const gate = createGate();
      api.addFault({ ...match, times, gate });
      return gate;
    },

    clearFaults() {
      for (const f of faults) {
        f.gate?.release();
      }
      faults = [];
    },

    // Number of requests matching a filter over the request log.
    count(filter = {}) {
      return requests.filter((r) => (filter.job === undefined || r.jobId === filter.job)
        && (filter.route === undefined || r.route === filter.route)
        && (filter.path === undefined || r.path === filter.path)
        && (filter.method === undefined || r.method === filter.method)).length;
    },

    jobCount(id) {
      return counts.byJob.get(id) ?? 0;
    },

    routeCount(route) {
      return counts.byRoute.get(route) ?? 0;
    },

    resetCounts() {
      counts.total = 0;
      counts.byMethodPath.clear();
      counts.byRoute.clear();
      counts.byJob.clear();
      requests.length = 0;
    },

    // Resolves once at least n logged requests satisfy pred.
    waitForRequests(pred, n = 1, timeoutMs = 5000) {
      return waitForCondition(events, 'request', () => requests.filter(pred).length >= n, timeoutMs,
        () => `upstream saw ${requests.filter(pred).length} of ${n} matching requests`);
    },

    async close() {
      api.clearFaults();
      for (const t of timers) {
        clearInterval(t);
      }
      for (const s of sockets) {
        s.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
  return api;
}

async function main() {
  const portArg = process.argv.indexOf('--port');
  const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
  const up = await startUpstream({ port });
  const samples = {};
  for (const org of Object.keys(ORGS)) {
    samples[`${org}-completed`] = up.createJob({ org, status: 'completed' });
    samples[`${org}-in_progress`] = up.createJob({ org, status: 'in_progress' });
  }
  process.stdout.write(`${up.url}\n`);
  process.stdout.write(`${JSON.stringify({ orgs: ORGS, keys: KEYS, jobs: samples }, null, 2)}\n`);
  const stop = () => up.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err) => {
    process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  });
}
