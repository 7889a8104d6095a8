/**
 * The Python extension's selected environment, when that extension is installed (now or
 * later). quantlens does not depend on it: offline installs and other editors' builds of
 * VS Code may lack it, and then the `quantlens.interpreter` setting or `python3` is used.
 */

import { PythonExtension } from "@vscode/python-extension";
import * as vscode from "vscode";

export const PYTHON_EXTENSION_ID = "ms-python.python";

export class PythonEnvironments implements vscode.Disposable {
  private api: PythonExtension | undefined;
  private connecting: Promise<void> | undefined;
  private readonly disposables: vscode.Disposable[] = [];

  /** `onChange` runs when the selected environment changes or the extension appears. */
  constructor(
    private readonly log: vscode.LogOutputChannel,
    private readonly onChange: () => void,
  ) {
    this.disposables.push(
      vscode.extensions.onDidChange(() => {
        if (this.api === undefined && vscode.extensions.getExtension(PYTHON_EXTENSION_ID)) {
          void this.connect().then(() => this.api && this.onChange());
        }
      }),
    );
  }

  connect(): Promise<void> {
    this.connecting ??= this.attach().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async attach(): Promise<void> {
    if (this.api !== undefined || vscode.extensions.getExtension(PYTHON_EXTENSION_ID) === undefined) {
      return;
    }
    try {
      const api = await PythonExtension.api();
      this.disposables.push(api.environments.onDidChangeActiveEnvironmentPath(() => this.onChange()));
      this.api = api;
    } catch (error) {
      this.log.warn(`the Python extension's API is unavailable: ${String(error)}`);
    }
  }

  /** The selected environment's executable for `resource`, or undefined when there is none. */
  async executable(resource: vscode.Uri | undefined): Promise<string | undefined> {
    await this.connect();
    if (this.api === undefined) {
      return undefined;
    }
    try {
      const path = this.api.environments.getActiveEnvironmentPath(resource);
      const environment = await this.api.environments.resolveEnvironment(path);
      return environment?.executable.uri?.fsPath;
    } catch (error) {
      this.log.warn(`the Python extension could not resolve the selected environment: ${String(error)}`);
      return undefined;
    }
  }

  dispose(): void {
    this.disposables.forEach((d) => void d.dispose());
  }
}
