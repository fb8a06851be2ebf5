/**
 * Politeness per host within one process: at most `cap` checks of a host at once, and at least
 * `gapMs` between the starts of two of them. Waiters are served in arrival order.
 */

interface HostState {
  active: number;
  lastStart: number;
  waiters: (() => void)[];
}

export class HostLimiter {
  private readonly hosts = new Map<string, HostState>();

  constructor(
    private readonly cap: number,
    private readonly gapMs: number,
  ) {}

  private state(host: string): HostState {
    let state = this.hosts.get(host);
    if (!state) {
      if (this.hosts.size >= 1000) this.prune();
      state = { active: 0, lastStart: 0, waiters: [] };
      this.hosts.set(host, state);
    }
    return state;
  }

  /** How many more checks of `host` could start now (the scheduler claims no more than this). */
  room(host: string): number {
    const state = this.hosts.get(host);
    return state ? Math.max(0, this.cap - state.active - state.waiters.length) : this.cap;
  }

  /** Waits for a slot of `host` and the gap since the last start; resolves to the release function. */
  async acquire(host: string): Promise<() => void> {
    const state = this.state(host);
    if (state.active >= this.cap || state.waiters.length > 0) {
      await new Promise<void>((resolve) => state.waiters.push(resolve));
    } else {
      state.active++;
    }
    // The slot is ours (a releasing holder handed it over, count included); now respect the gap.
    const wait = state.lastStart + this.gapMs - Date.now();
    state.lastStart = Math.max(Date.now(), state.lastStart + this.gapMs);
    if (wait > 0) await Bun.sleep(wait);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = state.waiters.shift();
      if (next) next();
      else state.active--;
    };
  }

  /** Forgets idle hosts whose gap has passed (their state no longer constrains anything). */
  private prune(): void {
    const now = Date.now();
    for (const [host, state] of this.hosts) {
      if (state.active === 0 && state.waiters.length === 0 && state.lastStart + this.gapMs < now) this.hosts.delete(host);
    }
  }
}
