/**
 * What the palette's "Quantize Now" tells the user, from the server's answer to its
 * `quantlens.quantizeNow` command ({projectDir: {report, summary, problems} | {cancelled}}).
 */

export interface QuantizeOutcome {
  readonly project: string;
  readonly kind: "done" | "failed" | "cancelled";
  /** The message to show (the server's summary when it sent one). */
  readonly message: string;
  /** The server's own summary, which it also sent as window/showMessage. */
  readonly summary: string | undefined;
  readonly report: string | undefined;
}

export function quantizeOutcomes(raw: unknown): QuantizeOutcome[] {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return [];
  }
  return Object.entries(raw as Record<string, unknown>)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([project, value]) => outcome(project, value));
}

function outcome(project: string, raw: unknown): QuantizeOutcome {
  const value = typeof raw === "object" && raw !== null ? (raw as Record<string, unknown>) : {};
  const summary = typeof value.summary === "string" && value.summary !== "" ? value.summary : undefined;
  const report = typeof value.report === "string" && value.report !== "" ? value.report : undefined;
  if (value.cancelled === true) {
    return { project, kind: "cancelled", message: `quantlens: the run for ${project} was cancelled`, summary, report };
  }
  const problems = Array.isArray(value.problems) ? value.problems : [];
  if (problems.length > 0) {
    return { project, kind: "failed", message: summary ?? `quantlens: the run for ${project} failed`, summary, report };
  }
  return { project, kind: "done", message: summary ?? `quantlens: ${project} quantized`, summary, report };
}

/** The report path in the answer to `quantlens.showReport` ({report: path | null, uri}). */
export function reportPath(raw: unknown): string | undefined {
  if (typeof raw !== "object" || raw === null) {
    return undefined;
  }
  const report = (raw as Record<string, unknown>).report;
  return typeof report === "string" && report !== "" ? report : undefined;
}
