// Transient notices: control and join requests, grants and denials, a turn
// that ended, a lost connection. A toast that waits for an answer stays
// while `waiting()` is true; others go after a few seconds.
export interface ToastAction {
  label: string;
  primary?: boolean;
  run: () => void;
}

export interface Toast {
  id: number;
  text: string;
  kind: "info" | "ask" | "warn";
  actions: ToastAction[];
  /** Still waiting for this person (stays, counts in the title). */
  waiting?: () => boolean;
  /** A newer toast with the same key replaces it (one "turn ended" per session). */
  key?: string;
}

const LIFETIME_MS = 6000;

export class Toasts {
  list: Toast[] = $state([]);
  #next = 1;

  push(t: Omit<Toast, "id">): number {
    const id = this.#next++;
    const others = t.key ? this.list.filter((x) => x.key !== t.key) : this.list;
    this.list = [...others.slice(-3), { ...t, id }];
    if (!t.waiting) setTimeout(() => this.dismiss(id), LIFETIME_MS);
    return id;
  }

  dismiss(id: number): void {
    this.list = this.list.filter((t) => t.id !== id);
  }

  /** Drops the waiting toasts that no longer wait. */
  prune(): void {
    const keep = this.list.filter((t) => !t.waiting || t.waiting());
    if (keep.length !== this.list.length) this.list = keep;
  }
}
