/**
 * Which Python runs the language server, decided from plain inputs so it can be tested
 * without VS Code.
 *
 * Order (as the quantlens issue asks): the environment selected in the Python extension,
 * else the `quantlens.interpreter` setting, else `python3` on PATH. The setting may be a
 * path or a command line split into words (see settings.ts) (`["/opt/py/bin/python", "-X", "utf8"]`), and may
 * name `${workspaceFolder}`, `${userHome}` or `${env:NAME}`, as the Microsoft Python tool
 * extensions allow.
 */

export type InterpreterSource = "python extension" | "setting" | "default";

export interface Interpreter {
  /** The executable and any arguments that come before `-m quantlens.daemon.cli serve`. */
  readonly command: readonly string[];
  readonly source: InterpreterSource;
}

export interface InterpreterInputs {
  /** The Python extension's resolved executable for the workspace, if it is installed and has one. */
  readonly pythonExtension?: string;
  /** The `quantlens.interpreter` setting as words (empty when unset). */
  readonly setting: readonly string[];
  readonly variables: Variables;
}

export interface Variables {
  readonly workspaceFolder?: string;
  readonly userHome?: string;
  readonly env: Readonly<Record<string, string | undefined>>;
}

export const DEFAULT_PYTHON = "python3";
export const SERVER_MODULE_ARGS: readonly string[] = ["-m", "quantlens.daemon.cli", "serve"];
/** What must import for the server to start: fails fast with ImportError when quantlens is absent. */
export const IMPORT_CHECK_ARGS: readonly string[] = ["-c", "import quantlens.daemon.server"];

export function resolveInterpreter(inputs: InterpreterInputs): Interpreter {
  const fromExtension = inputs.pythonExtension?.trim();
  if (fromExtension) {
    return { command: [fromExtension], source: "python extension" };
  }
  const words = inputs.setting.map((word) => expandVariables(word.trim(), inputs.variables));
  if (words.length > 0 && words[0] !== "") {
    return { command: words, source: "setting" };
  }
  return { command: [DEFAULT_PYTHON], source: "default" };
}

/** `${workspaceFolder}`, `${userHome}` and `${env:NAME}`; an unknown variable is left as written. */
export function expandVariables(value: string, variables: Variables): string {
  return value.replace(/\$\{([^}]+)\}/g, (whole, name: string) => {
    if (name === "workspaceFolder" && variables.workspaceFolder !== undefined) {
      return variables.workspaceFolder;
    }
    if (name === "userHome" && variables.userHome !== undefined) {
      return variables.userHome;
    }
    if (name.startsWith("env:")) {
      return variables.env[name.slice(4)] ?? "";
    }
    return whole;
  });
}

/** The server's command line: the interpreter's words, then `-m quantlens.daemon.cli serve`. */
export function serverCommand(interpreter: Interpreter): { command: string; args: string[] } {
  const [command, ...rest] = interpreter.command;
  return { command, args: [...rest, ...SERVER_MODULE_ARGS] };
}

/** The command line that checks that quantlens is importable by this interpreter. */
export function importCheckCommand(interpreter: Interpreter): { command: string; args: string[] } {
  const [command, ...rest] = interpreter.command;
  return { command, args: [...rest, ...IMPORT_CHECK_ARGS] };
}

/** A shell line the user can paste to install quantlens into exactly this interpreter. */
export function installCommand(interpreter: Interpreter): string {
  return [...interpreter.command, "-m", "pip", "install", "quantlens"].map(shellQuote).join(" ");
}

/** The interpreter as the user should read it in a message. */
export function describeInterpreter(interpreter: Interpreter): string {
  return interpreter.command.map(shellQuote).join(" ");
}

/** POSIX single quotes where a word holds anything a shell would read specially. */
export function shellQuote(word: string): string {
  if (/^[\w@%+=:,./-]+$/.test(word)) {
    return word;
  }
  return `'${word.replace(/'/g, `'\\''`)}'`;
}
