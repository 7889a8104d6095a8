/**
 * Starts, restarts and stops the language server (`<python> -m quantlens.daemon.cli serve`
 * over stdio), following the interpreter and the settings.
 *
 * Every start checks first that quantlens imports in the chosen interpreter; when it does not,
 * the user gets one notification per interpreter and nothing is started, so a missing install
 * never turns into a crash loop. Settings and interpreter changes go through one coalesced
 * reconcile: the server restarts only when it must, and otherwise gets didChangeConfiguration.
 */

import { execFile } from "node:child_process";
import * as os from "node:os";
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  MessageType,
  type LanguageClientOptions,
  ResponseError,
  type ServerOptions,
  ShowMessageNotification,
  State,
} from "vscode-languageclient/node";
import { Coalescer } from "./pure/coalesce";
import {
  IMPORT_CHECK_TIMEOUT_MS,
  type ImportCheck,
  importCheckMessage,
  importCheckResult,
} from "./pure/importCheck";
import {
  describeInterpreter,
  importCheckCommand,
  installCommand,
  type Interpreter,
  resolveInterpreter,
  serverCommand,
  type Variables,
} from "./pure/interpreter";
import { MessageGate, type HeldMessage } from "./pure/messageGate";
import {
  readSettings,
  restartReason,
  sameServerOptions,
  type Settings,
  toServerOptions,
  type ServerOptions as QuantlensOptions,
} from "./pure/settings";
import type { ClientState, ProjectStatus } from "./pure/status";
import { parseStatus } from "./pure/status";
import { NotificationProgressFeature } from "./progress";
import type { PythonEnvironments } from "./python";

export const STATUS_NOTIFICATION = "quantlens/status";
export const RECONCILE_DELAY_MS = 1000;

export const DOCUMENT_SELECTOR = [
  { scheme: "file", language: "python" },
  { scheme: "file", pattern: "**/quantlens.toml" },
  { scheme: "file", pattern: "**/pyproject.toml" },
];

export interface ServerHooks {
  onState(state: ClientState): void;
  onStatus(status: ProjectStatus): void;
  /** A report page the server asked to show (window/showDocument of an .html file). */
  showReport(path: string): Promise<void>;
}

interface Running {
  readonly client: LanguageClient;
  readonly interpreter: Interpreter;
  readonly settings: Settings;
  readonly options: QuantlensOptions;
}

export class ServerManager implements vscode.Disposable {
  private running: Running | undefined;
  /** The last settings and interpreter a start was attempted with (started or refused). */
  private attempted: { settings: Settings; interpreter: Interpreter } | undefined;
  private queue: Promise<void> = Promise.resolve();
  private warned = new Set<string>();
  private stopping = false;
  readonly messages: MessageGate;
  private readonly reconciler = new Coalescer(() => void this.enqueue(() => this.reconcile()), RECONCILE_DELAY_MS);

  constructor(
    private readonly log: vscode.LogOutputChannel,
    private readonly python: PythonEnvironments,
    private readonly hooks: ServerHooks,
  ) {
    this.messages = new MessageGate((message) => showServerMessage(message));
  }

  get client(): LanguageClient | undefined {
    return this.running?.client.state === State.Running ? this.running.client : undefined;
  }

  /** The settings or the interpreter changed: reconcile once the burst is over. */
  changed(): void {
    this.reconciler.touch();
  }

  start(): Promise<void> {
    return this.enqueue(() => this.startClient());
  }

  /** A restart the user asked for: it also shows again a notification already shown once. */
  restart(): Promise<void> {
    return this.enqueue(async () => {
      this.warned.clear();
      await this.stopClient();
      await this.startClient();
    });
  }

  private enqueue(step: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(step).catch((error: unknown) => {
      this.log.error(`quantlens: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    });
    return this.queue;
  }

  private async reconcile(): Promise<void> {
    const { settings, interpreter } = await this.current();
    const previous = this.running ?? this.attempted;
    const reason =
      previous === undefined || describeInterpreter(previous.interpreter) !== describeInterpreter(interpreter)
        ? "the interpreter changed"
        : restartReason(previous.settings, settings);
    if (reason || this.client === undefined) {
      this.log.info(`restarting the server: ${reason ?? "it is not running"}`);
      await this.stopClient();
      await this.startClient();
      return;
    }
    const options = toServerOptions(settings, variables());
    if (this.running && !sameServerOptions(this.running.options, options)) {
      this.log.info(`sending the changed settings to the server: ${JSON.stringify(options)}`);
      await this.running.client.sendNotification(DidChangeConfigurationNotification.type, { settings: options });
      this.running = { ...this.running, settings, options };
    }
  }

  private async current(): Promise<{ settings: Settings; interpreter: Interpreter }> {
    const folder = vscode.workspace.workspaceFolders?.[0];
    const configuration = vscode.workspace.getConfiguration("quantlens", folder?.uri);
    const settings = readSettings((name) => configuration.get(name));
    const interpreter = resolveInterpreter({
      pythonExtension: await this.python.executable(folder?.uri),
      setting: settings.interpreter,
      variables: variables(),
    });
    return { settings, interpreter };
  }

  private async startClient(): Promise<void> {
    const { settings, interpreter } = await this.current();
    this.attempted = { settings, interpreter };
    this.hooks.onState({ kind: "starting" });
    this.log.info(`interpreter: ${describeInterpreter(interpreter)} (from ${interpreter.source})`);
    const check = await checkImport(interpreter, workingDirectory());
    if (!check.ok) {
      this.refuse(check, interpreter);
      return;
    }
    const options = toServerOptions(settings, variables());
    const client = this.createClient(interpreter, options);
    this.running = { client, interpreter, settings, options };
    try {
      await client.start();
    } catch (error) {
      this.log.error(`the language server did not start: ${String(error)}`);
      this.hooks.onState({ kind: "stopped", message: `the language server did not start: ${String(error)}` });
    }
  }

  private refuse(check: Exclude<ImportCheck, { ok: true }>, interpreter: Interpreter): void {
    const message = importCheckMessage(check, interpreter);
    this.log.error(`${message.text} (${check.detail})`);
    this.hooks.onState({ kind: "not started", message: message.text });
    const key = `${describeInterpreter(interpreter)}\u0000${check.reason}`;
    if (this.warned.has(key)) {
      return;
    }
    this.warned.add(key);
    const buttons = message.offerInstall ? ["Show Output", "Copy install command"] : ["Show Output"];
    void vscode.window.showErrorMessage(message.text, ...buttons).then(async (choice) => {
      if (choice === "Show Output") {
        this.log.show();
      } else if (choice === "Copy install command") {
        await vscode.env.clipboard.writeText(installCommand(interpreter));
      }
    });
  }

  private createClient(interpreter: Interpreter, options: QuantlensOptions): LanguageClient {
    const { command, args } = serverCommand(interpreter);
    // stdio without a `transport`: with one, the client would append `--stdio`, which `serve` rejects
    const serverOptions: ServerOptions = {
      command,
      args,
      options: { cwd: workingDirectory(), env: { ...process.env, PYTHONUNBUFFERED: "1" } },
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: DOCUMENT_SELECTOR,
      outputChannel: this.log,
      traceOutputChannel: this.log,
      initializationOptions: options,
      middleware: {
        window: {
          showDocument: async (params, next) => {
            const uri = vscode.Uri.parse(params.uri);
            if (uri.scheme === "file" && /\.html?$/i.test(uri.path)) {
              await this.hooks.showReport(uri.fsPath);
              return { success: true };
            }
            const result = await next(params, new vscode.CancellationTokenSource().token);
            return result instanceof ResponseError ? { success: false } : result;
          },
        },
      },
    };
    const client = new LanguageClient("quantlens", "quantlens", serverOptions, clientOptions);
    client.registerFeature(new NotificationProgressFeature(client));
    client.onNotification(STATUS_NOTIFICATION, (raw: unknown) => {
      const status = parseStatus(raw);
      if (status) {
        this.hooks.onStatus(status);
      }
    });
    // replaces the client's own handler, so "Quantize Now" can show its summary once
    client.onNotification(ShowMessageNotification.type, (message) => this.messages.receive(message));
    client.onDidChangeState(({ newState }) => {
      if (newState === State.Stopped && !this.stopping && this.running?.client === client) {
        this.hooks.onState({ kind: "stopped", message: "the language server stopped; see the output" });
      }
    });
    return client;
  }

  private async stopClient(): Promise<void> {
    const running = this.running;
    this.running = undefined;
    if (running === undefined) {
      return;
    }
    this.stopping = true;
    try {
      if (running.client.needsStop()) {
        await running.client.stop(5000);
      }
    } catch (error) {
      this.log.warn(`stopping the server: ${String(error)}`);
    } finally {
      this.stopping = false;
    }
  }

  async dispose(): Promise<void> {
    this.reconciler.dispose();
    await this.enqueue(() => this.stopClient());
  }
}

function checkImport(interpreter: Interpreter, cwd: string | undefined): Promise<ImportCheck> {
  const { command, args } = importCheckCommand(interpreter);
  return new Promise((resolve) => {
    execFile(command, args, { cwd, timeout: IMPORT_CHECK_TIMEOUT_MS, windowsHide: true }, (error, _stdout, stderr) => {
      resolve(importCheckResult(error, String(stderr)));
    });
  });
}

function showServerMessage(message: HeldMessage): void {
  const show =
    message.type === MessageType.Error
      ? vscode.window.showErrorMessage
      : message.type === MessageType.Warning
        ? vscode.window.showWarningMessage
        : vscode.window.showInformationMessage;
  void show(message.message);
}

function workingDirectory(): string | undefined {
  return vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
}

function variables(): Variables {
  return { workspaceFolder: workingDirectory(), userHome: os.homedir(), env: process.env };
}
