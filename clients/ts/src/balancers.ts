/**
 * Balancers: which worker gets the next call. A balancer is any object with
 * `pick(workers)`; `workers` is never empty.
 */
import type { LoadReport } from "./load.js";

/** What a balancer may read of a worker. */
export interface LoadedWorker {
  /** This client's calls on the worker now. */
  readonly inFlight: number;
  /** The last load report the worker sent. */
  readonly load: LoadReport | undefined;
  /** Recent latency in milliseconds (0: no call answered yet); it fades over about ten seconds
   * while no call on the worker ends, so a worker once slow is tried again. */
  readonly latencyMs: number;
}

/** Picks the worker for the next call. */
export interface Balancer {
  pick<W extends LoadedWorker>(workers: readonly W[]): W;
}

/** Each worker in turn. */
export class RoundRobin implements Balancer {
  private counter = 0;

  pick<W>(workers: readonly W[]): W {
    return workers[this.counter++ % workers.length];
  }

  toString(): string {
    return "RoundRobin()";
  }
}

/**
 * The less loaded of two workers chosen at random ("power of two choices"); the default.
 *
 * A worker's load is the larger of this client's calls in flight on it and the calls in
 * flight and queued it last reported (reports older than `maxReportAgeMs` are ignored),
 * weighed by its recent latency, so one slow call steers the next ones elsewhere. A latency
 * fades over about ten seconds without calls, so a worker that was slow (or stopped, its calls
 * timing out) gets calls again in time.
 */
export class LeastLoaded implements Balancer {
  constructor(
    readonly maxReportAgeMs = 1_000,
    private readonly random: () => number = Math.random,
  ) {}

  /** Expected cost of one more call on `worker`. */
  score(worker: LoadedWorker, now: number, unknownLatency = 1): number {
    return this.cost(worker, now, worker.latencyMs || unknownLatency);
  }

  /** (calls ahead + 1) x `latencyMs`. */
  private cost(worker: LoadedWorker, now: number, latencyMs: number): number {
    let calls = worker.inFlight;
    const report = worker.load;
    if (report !== undefined && now - report.received <= this.maxReportAgeMs) {
      calls = Math.max(calls, report.inFlight + report.queued);
    }
    return (calls + 1) * latencyMs;
  }

  pick<W extends LoadedWorker>(workers: readonly W[]): W {
    if (workers.length === 1) return workers[0];
    const first = Math.floor(this.random() * workers.length);
    const second = Math.floor(this.random() * (workers.length - 1));
    const a = workers[first];
    const b = workers[second + (second >= first ? 1 : 0)];
    const now = performance.now();
    const latencyA = a.latencyMs; // each faded once
    const latencyB = b.latencyMs;
    const unknown = Math.max(latencyA, latencyB) || 1;
    const costB = this.cost(b, now, latencyB || unknown);
    return costB < this.cost(a, now, latencyA || unknown) ? b : a;
  }

  toString(): string {
    return `LeastLoaded(maxReportAgeMs=${this.maxReportAgeMs})`;
  }
}
