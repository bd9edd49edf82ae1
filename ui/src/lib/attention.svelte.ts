// What waits for this person (a permission to answer, a control or join
// request), for the window title: "(1) Bea asks for control — Ensemble".
// VmView sets it; App builds the title from it.
export const attention = $state({ count: 0, text: "" });

/** The window title for `base` (e.g. "Ensemble") with what waits. */
export function titleWith(base: string, count: number, text: string): string {
  return count > 0 ? `(${count}) ${text} — ${base}` : base;
}
