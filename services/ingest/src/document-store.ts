/**
 * Uploaded PDFs in the JetStream object store (bucket `documents`, prefixed with NATS_PREFIX),
 * named by the SHA-256 of their content, so the same file uploaded twice is stored once.
 */
import { Objm, setSha256Backend, StorageType, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@coursemesh/shared/nats.ts";

export interface StoredObject {
  sha256: string;
  size: number;
  modifiedAt: Date;
}

export interface DocumentStore {
  readonly bucket: string;
  /** Stores the bytes under their hash unless a complete copy is already there (`known`: it may be, so look first). */
  put(sha256: string, chunks: readonly Uint8Array[], size: number, known?: boolean): Promise<void>;
  /** The bytes of a stored document; throws when it is missing. */
  get(sha256: string): Promise<Uint8Array>;
  delete(sha256: string): Promise<void>;
  list(): Promise<StoredObject[]>;
}

const objectName = (sha256: string) => `sha256-${sha256}`;
/** Fewer, larger chunks: each is one JetStream publish awaited in turn (the server's max_payload is 1 MiB). */
const CHUNK_BYTES = 512 * 1024;

/** The bucket's name on the server: `documents`, or `<prefix>_documents` under a NATS_PREFIX. */
export function documentsBucket(prefix: string): string {
  return prefix ? `${prefix}_documents` : "documents";
}

/** Opens (creating if needed) the documents bucket, limited to `maxBytes`. */
export async function openDocumentStore(nats: NatsConnection, prefix: string, maxBytes: number): Promise<DocumentStore> {
  const bucket = documentsBucket(prefix);
  // The object store hashes every chunk it writes and reads; node:crypto does it many times faster than the default pure-JS SHA-256.
  setSha256Backend("native");
  const store: ObjectStore = await new Objm(nats).create(bucket, {
    description: "coursemesh ingest: uploaded course PDFs, named by SHA-256 of their content",
    storage: StorageType.File,
    max_bytes: maxBytes,
  });
  return {
    bucket,
    async put(sha256, chunks, size, known = true) {
      const name = objectName(sha256);
      if (known) {
        const existing = await store.info(name);
        if (existing && !existing.deleted && existing.size === size) return;
      }
      const source = new ReadableStream<Uint8Array>({
        start(controller) {
          for (const chunk of chunks) controller.enqueue(chunk);
          controller.close();
        },
      });
      const info = await store.put({ name, description: `sha256:${sha256}`, options: { max_chunk_size: CHUNK_BYTES } }, source);
      if (info.size !== size) throw new Error(`object store kept ${info.size} of ${size} bytes of ${sha256}`);
    },
    async get(sha256) {
      const bytes = await store.getBlob(objectName(sha256));
      if (!bytes) throw new Error(`document ${sha256} is missing from the object store bucket ${bucket}`);
      return bytes;
    },
    async delete(sha256) {
      await store.delete(objectName(sha256)).catch((error: unknown) => {
        if (!/not found/i.test(String((error as Error)?.message))) throw error;
      });
    },
    async list() {
      const objects = await store.list();
      return objects
        .filter((info) => !info.deleted && info.name.startsWith("sha256-"))
        .map((info) => ({ sha256: info.name.slice("sha256-".length), size: info.size, modifiedAt: new Date(info.mtime) }));
    },
  };
}
