// Runs The Guild's GraphQL-over-HTTP server audits (graphql-http) against the /graphql URL
// given as the only argument and prints each result as one line of JSON: id, name, status
// ("ok"; failures: "error" for MUST, "warn" for SHOULD, "notice" for MAY) and the reason.
// tests/it/audits.rs judges them; this script only reports.
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node run.mjs http://host:port/graphql');
  process.exit(2);
}

// One at a time: the order of the output is the suite's, and a failure is not a race.
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  const result = await audit.fn();
  const line = { id: result.id, name: result.name, status: result.status };
  if (result.status !== 'ok') {
    line.reason = result.reason;
    line.httpStatus = result.response?.status;
  }
  console.log(JSON.stringify(line));
}
