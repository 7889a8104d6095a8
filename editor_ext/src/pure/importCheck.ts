/**
 * The verdict on `<python> -c "import quantlens.daemon.server"`, run before the server is
 * started: a missing quantlens gets one clear message with the install command instead of a
 * server that crashes at start, is restarted and crashes again.
 */

import { describeInterpreter, installCommand, type Interpreter } from "./interpreter";

export const IMPORT_CHECK_TIMEOUT_MS = 30_000;

/** The parts of Node's `execFile` error that matter here. */
export interface ExecFailure {
  readonly code?: string | number | null;
  readonly killed?: boolean;
  readonly signal?: string | null;
}

export type ImportCheck =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: "not found" | "not installed" | "timed out" | "failed"; readonly detail: string };

export function importCheckResult(error: ExecFailure | null, stderr: string): ImportCheck {
  if (error === null) {
    return { ok: true };
  }
  const detail = lastLine(stderr) || String(error.code ?? error.signal ?? "no output");
  if (error.code === "ENOENT" || error.code === "EACCES") {
    return { ok: false, reason: "not found", detail: String(error.code) };
  }
  if (error.killed === true || error.signal === "SIGTERM") {
    return { ok: false, reason: "timed out", detail };
  }
  if (/\b(ModuleNotFoundError|ImportError)\b/.test(stderr)) {
    return { ok: false, reason: "not installed", detail };
  }
  return { ok: false, reason: "failed", detail };
}

export interface ImportCheckMessage {
  readonly text: string;
  /** Whether "Copy install command" can help. */
  readonly offerInstall: boolean;
}

export function importCheckMessage(check: Exclude<ImportCheck, { ok: true }>, interpreter: Interpreter): ImportCheckMessage {
  const python = describeInterpreter(interpreter);
  switch (check.reason) {
    case "not installed":
      return { text: `quantlens is not installed for ${python}: ${installCommand(interpreter)}`, offerInstall: true };
    case "not found":
      return {
        text: `quantlens: cannot run ${python} (${check.detail}). Select an interpreter in the Python extension or set quantlens.interpreter.`,
        offerInstall: false,
      };
    case "timed out":
      return {
        text: `quantlens: ${python} did not import quantlens within ${IMPORT_CHECK_TIMEOUT_MS / 1000} s; the server was not started.`,
        offerInstall: false,
      };
    case "failed":
      return { text: `quantlens: importing quantlens with ${python} failed: ${check.detail}`, offerInstall: true };
  }
}

function lastLine(text: string): string {
  const lines = text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
  return lines.length > 0 ? lines[lines.length - 1] : "";
}
