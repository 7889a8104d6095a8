/**
 * The server ends "Quantize Now" with a `window/showMessage` of its summary, then answers the
 * command with the same summary. The palette command shows the summary itself, with a
 * "Show Report" button, so while it waits the server's messages are held, and on its answer
 * those equal to a summary it will show are dropped; the rest are shown as they came.
 */

export interface HeldMessage {
  readonly type: number;
  readonly message: string;
}

export class MessageGate {
  private holders = 0;
  private held: HeldMessage[] = [];

  constructor(private readonly show: (message: HeldMessage) => void) {}

  /** A server message: shown now, or held while a command waits for its answer. */
  receive(message: HeldMessage): void {
    if (this.holders > 0) {
      this.held.push(message);
    } else {
      this.show(message);
    }
  }

  hold(): void {
    this.holders += 1;
  }

  /**
   * The command's answer came (or failed): drop the held messages equal to `shownByCaller`
   * (once each) and, when no other command still waits, show the rest in order.
   */
  release(shownByCaller: readonly string[]): void {
    this.holders = Math.max(0, this.holders - 1);
    const drop = [...shownByCaller];
    this.held = this.held.filter((message) => {
      const index = drop.indexOf(message.message);
      if (index >= 0) {
        drop.splice(index, 1);
        return false;
      }
      return true;
    });
    if (this.holders === 0) {
      const shown = this.held;
      this.held = [];
      shown.forEach((message) => this.show(message));
    }
  }
}
