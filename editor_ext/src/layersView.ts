/**
 * The "quantlens: Layers" tree in the Explorer: every quantization point, most damaged
 * first, each revealing its source line. It asks the server (`quantlens/layers`) whenever a
 * run has finished, so it always shows the diagnostics' own numbers.
 */

import * as path from "node:path";
import * as vscode from "vscode";
import type { LanguageClient } from "vscode-languageclient/node";
import { Coalescer } from "./pure/coalesce";
import {
  groupByProject,
  type LayerRow,
  layerDescription,
  layerIcon,
  layerTooltip,
  parseLayers,
  revealLine,
} from "./pure/layers";

export const LAYERS_VIEW = "quantlensLayers";
export const LAYERS_REQUEST = "quantlens/layers";
const REFRESH_DELAY_MS = 250;

type Node = { kind: "project"; project: string; rows: LayerRow[] } | { kind: "layer"; row: LayerRow };

export class LayersView implements vscode.TreeDataProvider<Node>, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;
  private roots: Node[] = [];
  private readonly refresher = new Coalescer(() => void this.load(), REFRESH_DELAY_MS);

  constructor(
    private readonly client: () => LanguageClient | undefined,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  /** Ask the server again soon (statuses come in bursts; one request answers them all). */
  refresh(): void {
    this.refresher.touch();
  }

  clear(): void {
    this.roots = [];
    this.changed.fire();
  }

  private async load(): Promise<void> {
    const client = this.client();
    if (client === undefined) {
      this.clear();
      return;
    }
    try {
      const rows = parseLayers(await client.sendRequest(LAYERS_REQUEST, null));
      const groups = groupByProject(rows);
      this.roots =
        groups.length > 1
          ? groups.map((g) => ({ kind: "project", project: g.project, rows: g.rows }))
          : (groups[0]?.rows ?? []).map((row) => ({ kind: "layer", row }));
      this.changed.fire();
    } catch (error) {
      this.log.warn(`${LAYERS_REQUEST} failed: ${String(error)}`);
    }
  }

  getChildren(node?: Node): Node[] {
    if (node === undefined) {
      return this.roots;
    }
    return node.kind === "project" ? node.rows.map((row) => ({ kind: "layer", row })) : [];
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if (node.kind === "project") {
      const item = new vscode.TreeItem(path.basename(node.project), vscode.TreeItemCollapsibleState.Expanded);
      item.description = node.project;
      item.iconPath = new vscode.ThemeIcon("folder");
      return item;
    }
    return layerItem(node.row);
  }

  dispose(): void {
    this.refresher.dispose();
    this.changed.dispose();
  }
}

function layerItem(row: LayerRow): vscode.TreeItem {
  const item = new vscode.TreeItem(row.name, vscode.TreeItemCollapsibleState.None);
  item.id = `${row.project}\u0000${row.name}`;
  item.description = layerDescription(row);
  item.tooltip = layerTooltip(row);
  const icon = layerIcon(row);
  item.iconPath = new vscode.ThemeIcon(icon.id, icon.color ? new vscode.ThemeColor(icon.color) : undefined);
  if (row.source) {
    const line = revealLine(row);
    const selection = line === undefined ? undefined : new vscode.Range(line, 0, line, 0);
    item.command = {
      command: "vscode.open",
      title: "Reveal the layer's source",
      arguments: [vscode.Uri.file(row.source.file), { selection, preserveFocus: false }],
    };
  }
  return item;
}
