/**
 * Coalesces a burst of events (a settings edit typed key by key, an interpreter switch that
 * fires twice) into one action after a quiet period, so the server restarts once.
 */

export interface Timers {
  set(callback: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

export const REAL_TIMERS: Timers = {
  set: (callback, ms) => setTimeout(callback, ms),
  clear: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

export class Coalescer {
  private handle: unknown;
  private pending = false;

  constructor(
    private readonly action: () => void,
    private readonly delayMs: number,
    private readonly timers: Timers = REAL_TIMERS,
  ) {}

  /** Run the action once `delayMs` after the last call. */
  touch(): void {
    if (this.pending) {
      this.timers.clear(this.handle);
    }
    this.pending = true;
    this.handle = this.timers.set(() => {
      this.pending = false;
      this.action();
    }, this.delayMs);
  }

  /** Forget a pending action (the extension is deactivating). */
  dispose(): void {
    if (this.pending) {
      this.timers.clear(this.handle);
      this.pending = false;
    }
  }
}
