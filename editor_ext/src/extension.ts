/**
 * quantlens for VS Code: a thin shell over the language server (`quantlens serve`). The
 * server does the analysis and publishes diagnostics, hovers, inlay hints and quick fixes;
 * this file wires the commands, the status bar item, the Layers view and the report panel.
 *
 * The workspace's model code runs in the server's worker, so package.json declares untrusted
 * workspaces unsupported: VS Code does not activate the extension until the user trusts it.
 */

import * as vscode from "vscode";
import { ExecuteCommandRequest, type LanguageClient } from "vscode-languageclient/node";
import { LAYERS_VIEW, LayersView } from "./layersView";
import { quantizeOutcomes, reportPath } from "./pure/commands";
import { applyStatus, type ClientState, type ProjectStatus, statusText } from "./pure/status";
import { PythonEnvironments } from "./python";
import { ReportPanel } from "./reportPanel";
import { ServerManager } from "./serverManager";

/** The server's executeCommand ids (vscode-languageclient registers them itself, hence other palette ids). */
const SERVER_QUANTIZE = "quantlens.quantizeNow";
const SERVER_SHOW_REPORT = "quantlens.showReport";

let manager: ServerManager | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel("quantlens", { log: true });
  const status = new StatusItem();
  const report = new ReportPanel();
  const layers = new LayersView(() => manager?.client, log);
  const python = new PythonEnvironments(log, () => manager?.changed());
  const servers = new ServerManager(log, python, {
    onState: (state) => {
      status.set(state);
      if (state.kind !== "server") {
        layers.clear();
      }
    },
    onStatus: (update) => {
      status.update(update);
      if (update.state === "up to date" || update.state === "stale") {
        layers.refresh();
      }
    },
    showReport: (path) => report.show(path),
  });
  manager = servers;

  context.subscriptions.push(
    { dispose: () => void servers.dispose() },
    python,
    layers,
    report,
    status,
    vscode.window.registerTreeDataProvider(LAYERS_VIEW, layers),
    vscode.commands.registerCommand("quantlens.quantize", () => quantize(servers, report, log)),
    vscode.commands.registerCommand("quantlens.report", () => showReport(servers, report, log)),
    vscode.commands.registerCommand("quantlens.restartServer", () => servers.restart()),
    vscode.commands.registerCommand("quantlens.showOutput", () => log.show()),
    vscode.commands.registerCommand("quantlens.refreshLayers", () => layers.refresh()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration("quantlens")) {
        servers.changed();
      }
    }),
    log,
  );
  // not awaited: activation must not wait for the Python extension or the import check
  void servers.start();
}

export async function deactivate(): Promise<void> {
  await manager?.dispose();
  manager = undefined;
}

/** A full run with the HTML report; the summary (and a way to the report) when it is done. */
async function quantize(servers: ServerManager, report: ReportPanel, log: vscode.LogOutputChannel): Promise<void> {
  const client = requireClient(servers, log);
  if (client === undefined) {
    return;
  }
  servers.messages.hold();
  try {
    const answer: unknown = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "quantlens: quantizing" },
      () => client.sendRequest(ExecuteCommandRequest.type, { command: SERVER_QUANTIZE, arguments: [] }),
    );
    const outcomes = quantizeOutcomes(answer);
    servers.messages.release(outcomes.flatMap((o) => (o.summary ? [o.summary] : [])));
    if (outcomes.length === 0) {
      void vscode.window.showInformationMessage("quantlens: no project to quantize (no quantlens.toml or [tool.quantlens] found)");
    }
    for (const outcome of outcomes) {
      void announce(outcome, report, log);
    }
  } catch (error) {
    servers.messages.release([]);
    log.error(`Quantize Now failed: ${String(error)}`);
    void vscode.window.showErrorMessage(`quantlens: Quantize Now failed: ${String(error)}`, "Show Output").then(
      (choice) => choice && log.show(),
    );
  }
}

async function announce(
  outcome: ReturnType<typeof quantizeOutcomes>[number],
  report: ReportPanel,
  log: vscode.LogOutputChannel,
): Promise<void> {
  if (outcome.kind === "failed") {
    if ((await vscode.window.showErrorMessage(outcome.message, "Show Output")) !== undefined) {
      log.show();
    }
    return;
  }
  if (outcome.kind === "cancelled" || outcome.report === undefined) {
    void vscode.window.showInformationMessage(outcome.message);
    return;
  }
  if ((await vscode.window.showInformationMessage(outcome.message, "Show Report")) !== undefined) {
    await report.show(outcome.report);
  }
}

async function showReport(servers: ServerManager, report: ReportPanel, log: vscode.LogOutputChannel): Promise<void> {
  const client = requireClient(servers, log);
  if (client === undefined) {
    return;
  }
  try {
    const path = reportPath(await client.sendRequest(ExecuteCommandRequest.type, { command: SERVER_SHOW_REPORT, arguments: [] }));
    if (path !== undefined) {
      await report.show(path);
    }
  } catch (error) {
    log.error(`Show Report failed: ${String(error)}`);
    void vscode.window.showErrorMessage(`quantlens: cannot show the report: ${String(error)}`);
  }
}

function requireClient(servers: ServerManager, log: vscode.LogOutputChannel): LanguageClient | undefined {
  const client = servers.client;
  if (client === undefined) {
    void vscode.window
      .showWarningMessage("quantlens: the language server is not running; see the output.", "Show Output")
      .then((choice) => choice && log.show());
  }
  return client;
}

/** The status bar item: the server's state, click for the output. */
class StatusItem implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem("quantlens.status", vscode.StatusBarAlignment.Left, 50);
  private projects: ProjectStatus[] = [];

  constructor() {
    this.item.name = "quantlens";
    this.item.command = "quantlens.showOutput";
    this.set({ kind: "starting" });
    this.item.show();
  }

  set(state: ClientState): void {
    if (state.kind !== "server") {
      this.projects = [];
    }
    const text = statusText(state);
    this.item.text = text.text;
    this.item.tooltip = text.tooltip;
    this.item.backgroundColor = text.alert ? new vscode.ThemeColor(`statusBarItem.${text.alert}Background`) : undefined;
  }

  update(status: ProjectStatus): void {
    this.projects = applyStatus(this.projects, status);
    this.set({ kind: "server", projects: this.projects });
  }

  dispose(): void {
    this.item.dispose();
  }
}
