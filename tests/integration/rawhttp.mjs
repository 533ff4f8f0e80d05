// Raw TCP helpers for the hardening tests: requests that node:http will not
// send (malformed framing, pipelining, huge heads, slow heads) and a parser
// for the responses that come back on one connection.
//
// Every helper has a deadline and returns what it saw: the parsed
// responses, whether the peer closed or reset the connection, and when.

import net from 'node:net';

const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

// Resolves with the socket once it is connected.
export function connectRaw(port, host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

// Builds a request head: the request line, then header lines given as
// [name, value] pairs or whole strings, then the empty line.
export function requestHead(method, target, headers = []) {
  const lines = [`${method} ${target} HTTP/1.1`];
  for (const h of headers) {
    lines.push(Array.isArray(h) ? `${h[0]}: ${h[1]}` : h);
  }
  return `${lines.join('\r\n')}\r\n\r\n`;
}

function parseHead(text) {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
  if (m === null) {
    return null;
  }
  const headers = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) {
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
  }
  return { status: Number(m[1]), statusLine: lines[0], headers };
}

// Decodes a chunked body that starts at offset. Returns {body, end} or null
// while incomplete. Trailers are skipped.
function parseChunked(buf, offset) {
  const parts = [];
  let pos = offset;
  for (;;) {
    const eol = buf.indexOf(CRLF, pos);
    if (eol < 0) {
      return null;
    }
    const size = parseInt(buf.subarray(pos, eol).toString('latin1').split(';')[0], 16);
    if (Number.isNaN(size)) {
      throw new Error(`invalid chunk size line ${JSON.stringify(buf.subarray(pos, eol).toString('latin1'))}`);
    }
    pos = eol + 2;
    if (size === 0) {
      const end = buf.indexOf(CRLF, pos);
      if (end < 0) {
        return null;
      }
      // Skip trailer lines up to the empty line.
      let p = pos;
      while (buf.indexOf(CRLF, p) !== p) {
        const next = buf.indexOf(CRLF, p);
        if (next < 0) {
          return null;
        }
        p = next + 2;
      }
      return { body: Buffer.concat(parts), end: p + 2 };
    }
    if (buf.length < pos + size + 2) {
      return null;
    }
    parts.push(buf.subarray(pos, pos + size));
    pos += size + 2;
  }
}

// Splits the bytes received on one connection into responses. A response
// without Content-Length or chunked framing runs to the end of the data
// (it is complete only when the connection closed). Returns {responses,
// rest}, where rest is an unfinished response's bytes.
export function parseResponses(buf, { closed = true } = {}) {
  const responses = [];
  let pos = 0;
  while (pos < buf.length) {
    const headEnd = buf.indexOf(HEAD_END, pos);
    if (headEnd < 0) {
      break;
    }
    const head = parseHead(buf.subarray(pos, headEnd).toString('latin1'));
    if (head === null) {
      break;
    }
    const bodyStart = headEnd + 4;
    let body;
    let end;
    if (head.status === 304 || head.status === 204 || (head.status >= 100 && head.status < 200)) {
      body = Buffer.alloc(0);
      end = bodyStart;
    } else if (/chunked/i.test(head.headers['transfer-encoding'] ?? '')) {
      const chunked = parseChunked(buf, bodyStart);
      if (chunked === null) {
        break;
      }
      ({ body, end } = chunked);
    } else if (head.headers['content-length'] !== undefined) {
      const length = Number(head.headers['content-length']);
      if (buf.length < bodyStart + length) {
        break;
      }
      body = buf.subarray(bodyStart, bodyStart + length);
      end = bodyStart + length;
    } else {
      if (!closed) {
        break;
      }
      body = buf.subarray(bodyStart);
      end = buf.length;
    }
    const text = body.toString('utf8');
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    responses.push({ ...head, body: text, json });
    pos = end;
  }
  return { responses, rest: buf.subarray(pos) };
}

// Sends data (a string, a Buffer, or an array of them written in order) on
// a new connection and reads until the peer closes, expectResponses
// responses are complete, or timeoutMs passes. Resolves with {responses,
// rest, raw, closed, reset, timedOut, elapsedMs, writeError}.
export function exchange(port, data, { timeoutMs = 5000, expectResponses = Infinity, host = '127.0.0.1' } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = net.connect({ host, port });
    const chunks = [];
    let done = false;
    let reset = false;
    let writeError;

    const finish = (how) => {
      if (done) {
        return;
      }
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const raw = Buffer.concat(chunks);
      const closed = how !== 'timeout' && how !== 'enough';
      const parsed = parseResponses(raw, { closed });
      resolve({
        ...parsed,
        raw,
        closed,
        reset,
        timedOut: how === 'timeout',
        elapsedMs: Date.now() - started,
        writeError,
      });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);

    socket.on('data', (c) => {
      chunks.push(c);
      if (expectResponses !== Infinity
        && parseResponses(Buffer.concat(chunks), { closed: false }).responses.length >= expectResponses) {
        finish('enough');
      }
    });
    socket.on('end', () => finish('end'));
    socket.on('close', () => finish('close'));
    socket.on('error', (err) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        reset = true;
        writeError = err.code;
        finish('reset');
      } else if (!done) {
        done = true;
        clearTimeout(timer);
        reject(err);
      }
    });
    socket.on('connect', () => {
      for (const part of Array.isArray(data) ? data : [data]) {
        socket.write(part);
      }
    });
  });
}

// The soft limit on open files of this process, or Infinity if unknown.
export async function openFileLimit() {
  const fs = await import('node:fs');
  try {
    const text = fs.readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (m) {
      return m[1] === 'unlimited' ? Infinity : Number(m[1]);
    }
  } catch {
    // Not Linux: no limit known.
  }
  return Infinity;
}

// Opens count connections and sends prefix on each, then one byte of
// filler per tickMs to every connection still open, for at most maxTicks
// ticks, until the peer closed all of them. Connections are opened
// batchSize at a time so that the listen backlog does not overflow.
// Resolves with one record per connection: {connectedAt, closedAt (or
// null), reset, bytes (received)}.
export async function slowloris(port, { count, prefix, filler = 'a', tickMs = 200, maxTicks = 50, batchSize = 200, host = '127.0.0.1' }) {
  const conns = [];
  for (let i = 0; i < count; i += batchSize) {
    const batch = Array.from({ length: Math.min(batchSize, count - i) }, () => new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      const record = { socket, connectedAt: null, closedAt: null, reset: false, bytes: 0 };
      socket.once('connect', () => {
        record.connectedAt = Date.now();
        socket.write(prefix);
        resolve(record);
      });
      socket.on('data', (c) => {
        record.bytes += c.length;
      });
      socket.on('error', (err) => {
        if (record.connectedAt === null) {
          reject(err);
          return;
        }
        record.reset = true;
      });
      // The peer's FIN ('end') is when jobgate closed; 'close' covers resets.
      socket.on('end', () => {
        record.closedAt ??= Date.now();
      });
      socket.on('close', () => {
        record.closedAt ??= Date.now();
      });
    }));
    conns.push(...await Promise.all(batch));
  }

  for (let tick = 0; tick < maxTicks; tick++) {
    const open = conns.filter((c) => c.closedAt === null);
    if (open.length === 0) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, tickMs));
    for (const c of open) {
      if (c.closedAt === null && !c.socket.destroyed) {
        c.socket.write(filler);
      }
    }
  }
  for (const c of conns) {
    c.socket.destroy();
  }
  return conns.map(({ socket, ...rest }) => rest);
}

// Latency percentile (0..100) of a list of milliseconds.
export function percentile(values, p) {
  if (values.length === 0) {
    return NaN;
  }
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)];
}
