/**
 * The Layers view's rows from the server's `quantlens/layers` answer: their order (most
 * damaged first) and their text. Plain data in, plain data out; the view turns it into
 * TreeItems.
 */

import type { Severity } from "./settings";

export interface SourceLocation {
  readonly file: string;
  /** 1-based; 0 when only the file is known. */
  readonly line: number;
  readonly column: number;
}

export interface LayerFinding {
  readonly rule: string;
  readonly severity: Severity;
  readonly message: string;
}

export interface LayerRow {
  readonly project: string;
  readonly name: string;
  readonly op: string;
  readonly kind: string;
  readonly source: SourceLocation | null;
  readonly isolated_sqnr_db: number | null;
  readonly cumulative_sqnr_db: number | null;
  readonly quantized: boolean;
  readonly bits: number | null;
  readonly finding: LayerFinding | null;
  readonly estimated: boolean;
}

export interface LayerIcon {
  /** A codicon id. */
  readonly id: string;
  /** A theme colour id, or undefined for the default foreground. */
  readonly color: string | undefined;
}

/** The answer's rows, each checked; malformed rows are dropped rather than breaking the view. */
export function parseLayers(raw: unknown): LayerRow[] {
  return Array.isArray(raw) ? raw.map(parseRow).filter((row): row is LayerRow => row !== undefined) : [];
}

function parseRow(raw: unknown): LayerRow | undefined {
  if (typeof raw !== "object" || raw === null) {
    return undefined;
  }
  const r = raw as Record<string, unknown>;
  if (typeof r.name !== "string" || typeof r.project !== "string") {
    return undefined;
  }
  return {
    project: r.project,
    name: r.name,
    op: typeof r.op === "string" ? r.op : "",
    kind: typeof r.kind === "string" ? r.kind : "",
    source: parseSource(r.source),
    isolated_sqnr_db: finiteOrNull(r.isolated_sqnr_db),
    cumulative_sqnr_db: finiteOrNull(r.cumulative_sqnr_db),
    quantized: r.quantized !== false,
    bits: finiteOrNull(r.bits),
    finding: parseFinding(r.finding),
    estimated: r.estimated === true,
  };
}

function parseSource(raw: unknown): SourceLocation | null {
  if (typeof raw !== "object" || raw === null || typeof (raw as { file?: unknown }).file !== "string") {
    return null;
  }
  const s = raw as Record<string, unknown>;
  return { file: s.file as string, line: finiteOrNull(s.line) ?? 0, column: finiteOrNull(s.column) ?? 0 };
}

function parseFinding(raw: unknown): LayerFinding | null {
  if (typeof raw !== "object" || raw === null) {
    return null;
  }
  const f = raw as Record<string, unknown>;
  const severity = f.severity === "error" || f.severity === "warning" || f.severity === "info" ? f.severity : "info";
  return { rule: typeof f.rule === "string" ? f.rule : "", severity, message: typeof f.message === "string" ? f.message : "" };
}

function finiteOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/**
 * Most damaged first: lowest cumulative SQNR (what the layer's output has lost by then),
 * then lowest isolated SQNR; points without numbers last; ties by name, then project.
 */
export function sortLayers(rows: readonly LayerRow[]): LayerRow[] {
  return [...rows].sort(compareLayers);
}

export function compareLayers(a: LayerRow, b: LayerRow): number {
  return (
    compareNullableAscending(a.cumulative_sqnr_db, b.cumulative_sqnr_db) ||
    compareNullableAscending(a.isolated_sqnr_db, b.isolated_sqnr_db) ||
    compareText(a.name, b.name) ||
    compareText(a.project, b.project)
  );
}

function compareNullableAscending(a: number | null, b: number | null): number {
  if (a === null || b === null) {
    return a === b ? 0 : a === null ? 1 : -1;
  }
  return a - b;
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Rows grouped by project, each group sorted; groups in the order of their most damaged row. */
export function groupByProject(rows: readonly LayerRow[]): { project: string; rows: LayerRow[] }[] {
  const groups = new Map<string, LayerRow[]>();
  for (const row of sortLayers(rows)) {
    groups.set(row.project, [...(groups.get(row.project) ?? []), row]);
  }
  return [...groups].map(([project, members]) => ({ project, rows: members }));
}

export function formatDb(value: number | null): string {
  return value === null ? "–" : `${value.toFixed(1)} dB`;
}

/** `op · iso X dB · cum Y dB` (and what else changes how to read the numbers). */
export function layerDescription(row: LayerRow): string {
  const parts = [row.op || row.kind];
  if (!row.quantized) {
    parts.push("not quantized");
  }
  parts.push(`iso ${formatDb(row.isolated_sqnr_db)}`, `cum ${formatDb(row.cumulative_sqnr_db)}`);
  if (row.estimated) {
    parts.push("estimated");
  }
  return parts.join(" · ");
}

export function layerTooltip(row: LayerRow): string {
  const lines = [`${row.name} (${[row.op, row.kind].filter(Boolean).join(", ")})`];
  if (row.source) {
    lines.push(row.source.line > 0 ? `${row.source.file}:${row.source.line}` : row.source.file);
  }
  const precision = row.quantized ? (row.bits !== null ? `${row.bits}-bit activations` : "quantized") : "not quantized";
  lines.push(
    `isolated SQNR ${formatDb(row.isolated_sqnr_db)}, cumulative SQNR ${formatDb(row.cumulative_sqnr_db)}; ${precision}`,
  );
  if (row.estimated) {
    lines.push("estimated from cached statistics: run \"quantlens: Quantize Now\" to measure");
  }
  lines.push(row.finding ? `worst finding: ${row.finding.severity} ${row.finding.rule}: ${row.finding.message}` : "no finding");
  return lines.join("\n");
}

const SEVERITY_ICONS: Record<Severity, LayerIcon> = {
  error: { id: "error", color: "problemsErrorIcon.foreground" },
  warning: { id: "warning", color: "problemsWarningIcon.foreground" },
  info: { id: "info", color: "problemsInfoIcon.foreground" },
};

export function layerIcon(row: LayerRow): LayerIcon {
  if (row.finding) {
    return SEVERITY_ICONS[row.finding.severity];
  }
  return row.quantized ? { id: "pass", color: "testing.iconPassed" } : { id: "circle-outline", color: undefined };
}

/** The 0-based line to reveal for a row, or undefined to open the file at its top. */
export function revealLine(row: LayerRow): number | undefined {
  return row.source && row.source.line > 0 ? row.source.line - 1 : undefined;
}
