/**
 * The HTML report in a webview beside the code: one panel, re-used and re-rendered whenever a
 * report is shown, reading only from the report's folder.
 */

import * as vscode from "vscode";
import { webviewHtml } from "./pure/reportHtml";

export class ReportPanel implements vscode.Disposable {
  private panel: vscode.WebviewPanel | undefined;

  async show(reportPath: string): Promise<void> {
    const file = vscode.Uri.file(reportPath);
    const folder = vscode.Uri.joinPath(file, "..");
    const html = new TextDecoder("utf-8").decode(await vscode.workspace.fs.readFile(file));
    const panel = this.panel ?? this.create();
    panel.webview.options = { enableScripts: false, localResourceRoots: [folder] };
    panel.title = "quantlens report";
    panel.webview.html = webviewHtml(html, panel.webview.cspSource, (relative) =>
      panel.webview.asWebviewUri(vscode.Uri.joinPath(folder, relative)).toString(),
    );
    panel.reveal(undefined, false);
  }

  private create(): vscode.WebviewPanel {
    const panel = vscode.window.createWebviewPanel("quantlensReport", "quantlens report", vscode.ViewColumn.Beside, {
      enableScripts: false,
      enableFindWidget: true,
    });
    panel.onDidDispose(() => (this.panel = undefined));
    this.panel = panel;
    return panel;
  }

  dispose(): void {
    this.panel?.dispose();
  }
}
