/** A one-slot wake-up for a polling loop: a `notify` that comes before the `wait` is kept, not lost. */
export class Wakeup {
  private pending = false;
  private waiter: (() => void) | undefined;

  /** Ends the current or next `wait` early. */
  notify(): void {
    this.pending = true;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  /** Sleeps up to `ms`, or not at all if a `notify` is pending. */
  async wait(ms: number): Promise<void> {
    if (!this.pending && ms > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.waiter = undefined;
          resolve();
        }, ms);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.pending = false;
  }
}
