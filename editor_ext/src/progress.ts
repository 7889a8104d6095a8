/**
 * Server-initiated work-done progress as VS Code progress notifications with a Cancel button.
 *
 * vscode-languageclient 9 shows such progress only in the status bar, where it cannot be
 * cancelled. This feature is registered after the built-in one, so its
 * `window/workDoneProgress/create` handler replaces that one; Cancel sends
 * `window/workDoneProgress/cancel`, which stops the server's worker run.
 */

import * as vscode from "vscode";
import {
  type BaseLanguageClient,
  type ClientCapabilities,
  type FeatureState,
  type StaticFeature,
  WorkDoneProgress,
  type WorkDoneProgressBegin,
  WorkDoneProgressCancelNotification,
  WorkDoneProgressCreateRequest,
  type WorkDoneProgressReport,
} from "vscode-languageclient";

type Token = string | number;

export class NotificationProgressFeature implements StaticFeature {
  private readonly active = new Set<NotificationProgress>();

  constructor(private readonly client: BaseLanguageClient) {}

  fillClientCapabilities(capabilities: ClientCapabilities): void {
    capabilities.window = { ...capabilities.window, workDoneProgress: true };
  }

  initialize(): void {
    this.client.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
      const part = new NotificationProgress(this.client, token, () => this.active.delete(part));
      this.active.add(part);
    });
  }

  getState(): FeatureState {
    return { kind: "static" };
  }

  clear(): void {
    for (const part of this.active) {
      part.done();
    }
    this.active.clear();
  }
}

class NotificationProgress {
  private listener: vscode.Disposable | undefined;
  private progress: vscode.Progress<{ message?: string; increment?: number }> | undefined;
  private finish: (() => void) | undefined;
  private reported = 0;
  private ended = false;

  constructor(
    private readonly client: BaseLanguageClient,
    private readonly token: Token,
    private readonly onDone: () => void,
  ) {
    this.listener = client.onProgress(WorkDoneProgress.type, token, (value) => {
      if (value.kind === "begin") {
        this.begin(value);
      } else if (value.kind === "report") {
        this.report(value);
      } else {
        this.done();
      }
    });
  }

  private begin(params: WorkDoneProgressBegin): void {
    const options = { location: vscode.ProgressLocation.Notification, title: params.title, cancellable: params.cancellable ?? false };
    void vscode.window.withProgress(options, (progress, cancellation) => {
      if (this.ended) {
        return Promise.resolve();
      }
      this.progress = progress;
      cancellation.onCancellationRequested(() => {
        void this.client.sendNotification(WorkDoneProgressCancelNotification.type, { token: this.token });
      });
      this.report(params);
      return new Promise<void>((resolve) => (this.finish = resolve));
    });
  }

  /** VS Code wants increments; the server sends absolute percentages. */
  private report(params: WorkDoneProgressReport | WorkDoneProgressBegin): void {
    if (this.progress === undefined) {
      return;
    }
    const percentage = typeof params.percentage === "number" ? Math.max(0, Math.min(params.percentage, 100)) : undefined;
    const increment = percentage === undefined ? undefined : Math.max(0, percentage - this.reported);
    this.reported += increment ?? 0;
    this.progress.report({ message: params.message, increment });
  }

  done(): void {
    this.ended = true;
    this.listener?.dispose();
    this.listener = undefined;
    this.finish?.();
    this.finish = undefined;
    this.onDone();
  }
}
