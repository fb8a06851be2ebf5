import type { Logger } from "./logger.ts";

/** The order of a graceful stop (CONVENTIONS.md habit 7). */
export const SHUTDOWN_PHASES = ["not-serving", "stop-intake", "finish-in-flight", "drain-nats", "close-db", "flush-telemetry"] as const;
export type ShutdownPhase = (typeof SHUTDOWN_PHASES)[number];

export interface Shutdown {
  /** Registers a step; steps run phase by phase, steps of one phase together. */
  on(phase: ShutdownPhase, name: string, step: () => Promise<void> | void): void;
  /** Runs every step once; later calls wait for the first. */
  run(reason: string): Promise<void>;
  readonly started: boolean;
}

/**
 * Graceful shutdown: health NOT_SERVING → stop taking work → finish in-flight work → drain NATS →
 * close the pool → flush telemetry → exit 0. A step that fails is logged and the rest still run;
 * past `timeoutMs` the process exits 1 rather than hang.
 */
export function createShutdown(logger: Logger, timeoutMs: number, exit: (code: number) => void = (code) => process.exit(code)): Shutdown {
  const steps = new Map<ShutdownPhase, { name: string; step: () => Promise<void> | void }[]>();
  let running: Promise<void> | undefined;

  async function runSteps(reason: string) {
    logger.info({ reason }, "shutting down");
    for (const phase of SHUTDOWN_PHASES) {
      await Promise.all(
        (steps.get(phase) ?? []).map(async ({ name, step }) => {
          try {
            await step();
          } catch (error) {
            logger.error({ err: error, phase, step: name }, "shutdown step failed");
          }
        }),
      );
    }
  }

  const shutdown: Shutdown = {
    on(phase, name, step) {
      steps.set(phase, [...(steps.get(phase) ?? []), { name, step }]);
    },
    run(reason) {
      running ??= (async () => {
        const timer = setTimeout(() => {
          logger.error({ timeoutMs }, "shutdown timed out; exiting");
          exit(1);
        }, timeoutMs);
        timer.unref?.();
        await runSteps(reason);
        clearTimeout(timer);
      })();
      return running;
    },
    get started() {
      return running !== undefined;
    },
  };
  return shutdown;
}

/** Wires SIGTERM and SIGINT to the shutdown, then exits 0. */
export function exitOnSignals(shutdown: Shutdown, exit: (code: number) => void = (code) => process.exit(code)): void {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      void shutdown.run(signal).then(() => exit(0));
    });
  }
}
