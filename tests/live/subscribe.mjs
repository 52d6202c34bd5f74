// Drives one GraphQL subscription (or several on one connection) through a reference client and
// reports what the client sees, one JSON object a line on stdout. tests/it/live_client.rs judges
// the lines; this script only reports.
//
//   node subscribe.mjs <ws|sse> <url> <json-options>
//
// ws:  graphql-ws (the graphql-transport-ws protocol) over WebSocket; an http(s):// URL is taken
//      as the ws(s):// one.
// sse: graphql-sse in distinct connections mode: POST <url> with Accept: text/event-stream.
//
// Options (JSON): query (required), variables, operationName, authorization ("Bearer x" or
// null), authIn ("init": the connection_init payload {Authorization}, the default; "header": the
// Authorization header of the WebSocket upgrade; sse always sends the header), count (exit 0,
// with no further line, after this many "next" lines in all), subscriptions (ws only: K
// subscriptions of the same operation on one connection; their lines carry "index"), timeoutMs
// (30000).
//
// Lines:
//   {"type":"ready"}                 once: ws when the server acknowledged the connection and the
//                                    subscribe messages were sent; sse right after subscribing
//   {"type":"open","status":200}     sse only: the streaming response arrived (2xx)
//   {"type":"next","payload":{...}}  a result (with "index" when subscriptions is given)
//   {"type":"complete"}              the server completed (every) subscription; exit 0
//   {"type":"error","error":...,"code":4401}
//                                    the connection closed (code and reason, ws), the client
//                                    failed (a message; sse adds the HTTP status and body), or
//                                    the server sent GraphQL errors (an array); exit 1
//   {"type":"stopped"}               after "stop" on stdin: the client unsubscribed; exit 0
// A run that has not finished after timeoutMs prints an error line with "timeout":true, exit 3.
import WebSocket from 'ws';
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient, NetworkError } from 'graphql-sse';

const [transport, rawUrl, rawOptions] = process.argv.slice(2);
if (!['ws', 'sse'].includes(transport) || !rawUrl) {
  console.error('usage: node subscribe.mjs <ws|sse> <url> <json-options>');
  process.exit(2);
}
let options;
try {
  options = JSON.parse(rawOptions ?? '{}');
} catch (e) {
  console.error(`the options are not JSON: ${e.message}`);
  process.exit(2);
}
if (typeof options.query !== 'string') {
  console.error('the options need a "query"');
  process.exit(2);
}

const payload = { query: options.query };
if (options.variables != null) payload.variables = options.variables;
if (options.operationName != null) payload.operationName = options.operationName;
const authorization = options.authorization ?? null;
const authIn = options.authIn ?? 'init';
const count = Number.isInteger(options.count) ? options.count : null;
const many = Number.isInteger(options.subscriptions) ? options.subscriptions : null;
const timeoutMs = Number.isInteger(options.timeoutMs) ? options.timeoutMs : 30000;

let finished = false;
let dispose = () => {};

function print(line) {
  if (!finished) process.stdout.write(JSON.stringify(line) + '\n');
}

// Prints the last line, lets the client go and exits once stdout has drained.
function finish(line, status) {
  if (finished) return;
  if (line) print(line);
  finished = true;
  try {
    dispose();
  } catch {
    // the client is going anyway
  }
  process.stdout.write('', () => process.exit(status));
}

// Also what keeps the process up while the client holds nothing open.
setTimeout(
  () => finish({ type: 'error', error: `no end within ${timeoutMs} ms`, timeout: true }, 3),
  timeoutMs,
);

let nexts = 0;
function onNext(result, index) {
  const line = { type: 'next', payload: result };
  if (index != null) line.index = index;
  print(line);
  nexts += 1;
  if (count != null && nexts >= count) finish(null, 0);
}

// Turns what a client reports as an error into the "error" line: at once (a close must win over
// the same failure reaching a subscription's sink a few ticks later), except that an HTTP
// error's body is read first.
function fail(err) {
  if (finished) return;
  if (err instanceof NetworkError && err.response) {
    const line = { type: 'error', error: err.message, status: err.response.status };
    err.response
      .text()
      .then((text) => {
        try {
          line.body = JSON.parse(text);
        } catch {
          line.body = text;
        }
      })
      .catch(() => {})
      .finally(() => finish(line, 1));
    return;
  }
  finish(errorLine(err), 1);
}

function errorLine(err) {
  if (Array.isArray(err)) return { type: 'error', error: err };
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) {
    return { type: 'error', error: String(err.reason), code: err.code };
  }
  if (err && typeof err === 'object' && 'message' in err) {
    const cause = err.cause?.message ?? err.error?.message;
    const message = String(err.message);
    return { type: 'error', error: cause && cause !== message ? `${message}: ${cause}` : message };
  }
  return { type: 'error', error: String(err) };
}

// "stop" on stdin unsubscribes (ws: complete messages and a normal close; sse: the request is
// aborted) and exits 0.
process.stdin.setEncoding('utf8');
let input = '';
process.stdin.on('data', (chunk) => {
  input += chunk;
  if (input.split('\n').some((l) => l.trim() === 'stop')) finish({ type: 'stopped' }, 0);
});
process.stdin.on('error', () => {});

if (transport === 'ws') {
  const url = rawUrl.replace(/^http(s?):\/\//, 'ws$1://');
  let Impl = WebSocket;
  if (authIn === 'header' && authorization) {
    Impl = class extends WebSocket {
      constructor(address, protocols) {
        super(address, protocols, { headers: { Authorization: authorization } });
      }
    };
  }
  let ready = false;
  let socketError = null;
  let socketErrorTimer;
  const client = createWsClient({
    url,
    webSocketImpl: Impl,
    connectionParams: authIn === 'init' && authorization ? { Authorization: authorization } : undefined,
    retryAttempts: 0,
    lazy: false,
    // Reported by the "closed" and "error" listeners below, or the subscriptions' sinks.
    onNonLazyError: () => {},
    on: {
      connected: () => {
        if (ready) return;
        ready = true;
        // The subscribe messages go out in the continuations of this event: after them.
        setTimeout(() => print({ type: 'ready' }), 0);
      },
      // Any close is the end here: the client would otherwise reconnect on a normal close.
      // A socket error (refused, or the upgrade answered with 401) comes just before its close
      // (1006): one line with the error's message and the close code.
      closed: (event) => {
        if (socketError == null) return fail(event);
        clearTimeout(socketErrorTimer);
        fail({ code: event.code, reason: socketError });
      },
      error: (err) => {
        if (socketError != null) return;
        socketError = err?.message ?? String(err);
        socketErrorTimer = setTimeout(() => fail(err), 200);
      },
    },
  });
  const k = many ?? 1;
  const disposers = [];
  let completed = 0;
  for (let i = 0; i < k; i++) {
    disposers.push(
      client.subscribe(payload, {
        next: (result) => onNext(result, many == null ? null : i),
        error: (err) => fail(err),
        complete: () => {
          completed += 1;
          if (many != null && completed < k) print({ type: 'complete', index: i });
          else finish({ type: 'complete' }, 0);
        },
      }),
    );
  }
  dispose = () => {
    disposers.forEach((d) => d());
    client.dispose();
  };
} else {
  // Reports the streaming response once its headers are in, before handing it to the client.
  // A refused connection's reason is in the cause, which the client's error drops.
  const fetchFn = async (input, init) => {
    let res;
    try {
      res = await fetch(input, init);
    } catch (e) {
      const cause = e?.cause?.message ?? e?.cause?.code;
      if (!cause || e?.name === 'AbortError') throw e;
      throw new Error(`${e.message}: ${cause}`);
    }
    if (res.ok && init?.method === 'POST') print({ type: 'open', status: res.status });
    return res;
  };
  const client = createSseClient({
    url: rawUrl,
    singleConnection: false,
    headers: authorization ? { Authorization: authorization } : {},
    retryAttempts: 0,
    fetchFn,
  });
  const unsubscribe = client.subscribe(payload, {
    next: (result) => onNext(result, null),
    error: (err) => fail(err),
    complete: () => finish({ type: 'complete' }, 0),
  });
  dispose = () => {
    unsubscribe();
    client.dispose();
  };
  print({ type: 'ready' });
}
