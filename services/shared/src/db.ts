import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { SpanKind, withSpan } from "./telemetry.ts";

export type Sql = postgres.Sql<{}>;
export type Tx = postgres.TransactionSql<{}>;

export interface DbOptions {
  url: string;
  /** The service's own schema; it is first on the search_path. */
  schema: string;
  max?: number;
  applicationName?: string;
}

/** The process's one Postgres pool, with the service's schema on the search_path. */
export function createSql(options: DbOptions): Sql {
  return postgres(options.url, {
    max: options.max ?? 10,
    idle_timeout: 60,
    connect_timeout: 10,
    onnotice: () => {},
    connection: {
      search_path: `${options.schema},public`,
      application_name: options.applicationName ?? `coursemesh-${options.schema}`,
    },
  });
}

/** A stable 64-bit advisory lock key for a name (so every replica agrees without a registry). */
export function advisoryKey(name: string): bigint {
  return createHash("sha256").update(name).digest().readBigInt64BE(0);
}

/** A folder of migrations; `name` keeps versions of different folders apart (`platform`, the service's own). */
export interface MigrationSource {
  name: string;
  dir: string;
}

/** The platform's own tables (outbox, consumer dedupe) that every service schema gets. */
export const PLATFORM_MIGRATIONS: MigrationSource = {
  name: "platform",
  dir: new URL("../migrations", import.meta.url).pathname,
};

export interface Migration {
  version: string;
  name: string;
  sql: string;
  checksum: string;
}

/** Reads `NNNNN_name.sql` files in version order; versions are `<source>/<NNNNN>`. */
export function readMigrations({ name: source, dir }: MigrationSource): Migration[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((file) => /^\d{5}_[a-z0-9_]+\.sql$/.test(file))
    .sort()
    .map((file) => {
      const text = readFileSync(join(dir, file), "utf8");
      return {
        version: `${source}/${file.slice(0, 5)}`,
        name: file.slice(6, -4),
        sql: text,
        checksum: createHash("sha256").update(text).digest("hex"),
      };
    });
}

/**
 * Applies pending forward-only migrations to `schema` in one transaction under an advisory lock, so
 * replicas starting together (or a migration Job) apply each exactly once: first the platform's,
 * then the service's own. An applied migration whose file changed is refused: migrations are never
 * edited, only added.
 */
export async function migrate(sql: Sql, schema: string, sources: MigrationSource[]): Promise<string[]> {
  const migrations = sources.flatMap(readMigrations);
  return withSpan(`${schema}.migrate`, { kind: SpanKind.CLIENT, attributes: { "db.system.name": "postgresql" } }, () =>
    sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(${advisoryKey(`coursemesh.migrate.${schema}`).toString()}::bigint)`;
      await tx`create schema if not exists ${tx(schema)}`;
      await tx`create table if not exists ${tx(schema)}.schema_migrations (
        version text primary key,
        name text not null,
        checksum text not null,
        applied_at timestamptz not null default now()
      )`;
      const applied = new Map(
        (await tx`select version, checksum from ${tx(schema)}.schema_migrations`).map((row) => [row.version as string, row.checksum as string]),
      );
      const done: string[] = [];
      for (const migration of migrations) {
        const checksum = applied.get(migration.version);
        if (checksum !== undefined) {
          if (checksum !== migration.checksum) {
            throw new Error(`migration ${migration.version}_${migration.name} in schema ${schema} was changed after it was applied; add a new migration instead`);
          }
          continue;
        }
        await tx`set local search_path to ${tx(schema)}, public`;
        await tx.unsafe(migration.sql);
        await tx`insert into ${tx(schema)}.schema_migrations (version, name, checksum) values (${migration.version}, ${migration.name}, ${migration.checksum})`;
        done.push(`${migration.version}_${migration.name}`);
      }
      return done;
    }),
  );
}

/** Runs `fn` in one transaction inside a span named `<service>.<operation>`. */
export function transaction<T>(sql: Sql, spanName: string, fn: (tx: Tx) => Promise<T>): Promise<T> {
  return withSpan(spanName, { kind: SpanKind.CLIENT, attributes: { "db.system.name": "postgresql", "db.operation.name": "transaction" } }, () =>
    sql.begin((tx) => fn(tx)) as Promise<T>,
  );
}

/** Readiness check: the pool can run a query. */
export async function pingDatabase(sql: Sql): Promise<void> {
  await sql`select 1`;
}
