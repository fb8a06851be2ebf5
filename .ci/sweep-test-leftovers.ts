/**
 * Removes what interrupted test runs left on the shared Postgres and NATS: databases named
 * `cm_test_*`, and streams and object-store buckets with a test prefix (`t` + 10 hex digits) or
 * from the toolchain proof. Streams reserve their max_bytes on the server, so leftovers would
 * eventually make JetStream refuse new streams. Only what is older than MIN_AGE_MS is removed,
 * so a test run in progress elsewhere on the machine keeps its own.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import postgres from "postgres";

const MIN_AGE_MS = Number(process.env.SWEEP_MIN_AGE_MS ?? 10 * 60_000);
const TEST_STREAM = /^(OBJ_)?(t[0-9a-f]{10}|T[0-9A-F]{10})_|^TOOLCHAIN_|^OBJ_toolchain/;

const nc = await connect({ servers: process.env.TEST_NATS_URL ?? "nats://127.0.0.1:4222" });
const jsm = await jetstreamManager(nc);
let streams = 0;
for await (const info of jsm.streams.list()) {
  const old = Date.now() - Date.parse(info.created) > MIN_AGE_MS;
  if (old && TEST_STREAM.test(info.config.name)) {
    await jsm.streams.delete(info.config.name);
    streams++;
  }
}
await nc.close();

const sql = postgres(process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres", { max: 1, onnotice: () => {} });
// A database's directory is created with it, so its modification time is a fair creation time.
const stale = await sql<{ datname: string }[]>`
  select datname from pg_database
  where datname like 'cm\\_test\\_%'
    and (pg_stat_file('base/' || oid || '/PG_VERSION')).modification < now() - make_interval(secs => ${MIN_AGE_MS / 1000})`;
for (const { datname } of stale) await sql`drop database if exists ${sql(datname)} with (force)`;
await sql.end();
console.log(`[ci] removed ${streams} leftover test streams and ${stale.length} leftover test databases`);
