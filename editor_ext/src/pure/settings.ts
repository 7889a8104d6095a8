/**
 * The `quantlens.*` settings, read through a getter so the mapping to the server's options
 * (daemon/options.py) is testable without VS Code.
 *
 * The interpreter is the extension's business and never reaches the server (it would warn
 * about an unknown setting). Every other setting goes to the server as initialization options
 * and, on change, in `workspace/didChangeConfiguration`; the server applies them at once or at
 * its next run. Only the interpreter and the config path need a new server process.
 */

import { expandVariables, type Variables } from "./interpreter";

export const SEVERITIES = ["info", "warning", "error"] as const;
export const LOG_LEVELS = ["error", "warning", "info", "debug"] as const;
export type Severity = (typeof SEVERITIES)[number];
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Settings {
  readonly interpreter: readonly string[];
  readonly configPath: string;
  readonly runOnSave: boolean;
  readonly inlayHints: boolean;
  readonly minimumSeverity: Severity;
  readonly workerTimeoutS: number | null;
  readonly workerMemoryLimitMb: number | null;
  readonly logLevel: LogLevel;
}

/** The server's options, spelled as daemon/options.py reads them (camelCase aliases). */
export interface ServerOptions {
  configPath: string | null;
  runOnSave: boolean;
  inlayHints: boolean;
  minimumSeverity: Severity;
  workerTimeoutS: number | null;
  workerMemoryLimitMb: number | null;
  logLevel: LogLevel;
}

export const DEFAULTS: Settings = {
  interpreter: [],
  configPath: "",
  runOnSave: true,
  inlayHints: true,
  minimumSeverity: "info",
  workerTimeoutS: null,
  workerMemoryLimitMb: null,
  logLevel: "info",
};

/** Reads one setting by its name under `quantlens.` (VS Code's `WorkspaceConfiguration.get`). */
export type SettingGetter = (name: string) => unknown;

/** Every setting, each value checked; a value of the wrong type falls back to its default. */
export function readSettings(get: SettingGetter): Settings {
  return {
    interpreter: interpreterWords(get("interpreter")),
    configPath: typeof get("configPath") === "string" ? (get("configPath") as string).trim() : DEFAULTS.configPath,
    runOnSave: booleanOr(get("runOnSave"), DEFAULTS.runOnSave),
    inlayHints: booleanOr(get("inlayHints"), DEFAULTS.inlayHints),
    minimumSeverity: oneOf(get("minimumSeverity"), SEVERITIES, DEFAULTS.minimumSeverity),
    workerTimeoutS: positiveOrNull(get("workerTimeoutS")),
    workerMemoryLimitMb: positiveOrNull(get("workerMemoryLimitMb")),
    logLevel: oneOf(get("logLevel"), LOG_LEVELS, DEFAULTS.logLevel),
  };
}

/** The initialization options (and didChangeConfiguration settings) for the server. */
export function toServerOptions(settings: Settings, variables: Variables): ServerOptions {
  return {
    configPath: settings.configPath ? expandVariables(settings.configPath, variables) : null,
    runOnSave: settings.runOnSave,
    inlayHints: settings.inlayHints,
    minimumSeverity: settings.minimumSeverity,
    workerTimeoutS: settings.workerTimeoutS,
    workerMemoryLimitMb: settings.workerMemoryLimitMb,
    logLevel: settings.logLevel,
  };
}

/**
 * Why the server must be restarted to apply `next`, or undefined when a
 * didChangeConfiguration is enough.
 *
 * The config path is read once, when the server discovers its projects. A worker limit that
 * is cleared also needs a restart: the server ignores a null in didChangeConfiguration and
 * would keep the old limit instead of going back to the project's or the default.
 */
export function restartReason(previous: Settings, next: Settings): string | undefined {
  if (!sameWords(previous.interpreter, next.interpreter)) {
    return "the interpreter setting changed";
  }
  if (previous.configPath !== next.configPath) {
    return "the config path changed";
  }
  if (previous.workerTimeoutS !== null && next.workerTimeoutS === null) {
    return "the worker timeout was cleared";
  }
  if (previous.workerMemoryLimitMb !== null && next.workerMemoryLimitMb === null) {
    return "the worker memory limit was cleared";
  }
  return undefined;
}

export function sameServerOptions(a: ServerOptions, b: ServerOptions): boolean {
  return (Object.keys(a) as (keyof ServerOptions)[]).every((key) => a[key] === b[key]);
}

function interpreterWords(value: unknown): string[] {
  if (typeof value === "string") {
    return value.trim() ? [value.trim()] : [];
  }
  if (Array.isArray(value)) {
    return value.filter((word): word is string => typeof word === "string" && word.trim() !== "");
  }
  return [];
}

function booleanOr(value: unknown, fallback: boolean): boolean {
  return typeof value === "boolean" ? value : fallback;
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], fallback: T): T {
  const text = typeof value === "string" ? value.toLowerCase() : "";
  return (allowed as readonly string[]).includes(text) ? (text as T) : fallback;
}

function positiveOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : null;
}

function sameWords(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((word, i) => word === b[i]);
}
