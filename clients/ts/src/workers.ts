/** What the pool knows about workers, kept apart from how it talks to them (no I/O here). */
import type { LoadedWorker } from "./balancers.js";
import type { GetWorkerInfoResponse } from "./gen/tms/v1/model_service.js";
import type { LoadReport } from "./load.js";

/** How fast a worker's recorded latency fades while no call on it ends: it is multiplied by
 * exp(-elapsed / LATENCY_DECAY_MS) when read (10 s, as Finagle's peak EWMA). Latency is recorded
 * only when a call ends, so without this a worker that once answered slowly (or timed out while
 * stopped) would never be picked again and never record a faster call: a worker not picked must
 * be tried again in time. */
export const LATENCY_DECAY_MS = 10_000;

/** What a client shows of one worker process it is connected to. */
export interface WorkerInfo {
  /** The address the connection goes to. */
  address: string;
  /** The server's random id (equal for all its workers). */
  instanceId: string;
  pid: number;
  /** 0 to count - 1. */
  index: number;
  /** How many workers the server runs. */
  count: number;
  /** "cpu", "cuda:0"... */
  device: string;
  /** The models the worker has (empty: every model). */
  models: string[];
  /** This client's calls on the worker now. */
  inFlight: number;
  /** This client's calls sent to the worker so far. */
  calls: number;
  /** What the worker last reported: its calls running and queued (all clients). */
  reportedInFlight: number | undefined;
  reportedQueued: number | undefined;
}

/** One worker process and the connection (channel) that reaches it. */
export class Worker<C = unknown> implements LoadedWorker {
  inFlight = 0;
  calls = 0;
  load: LoadReport | undefined = undefined;
  /** The latency as last recorded, and when (a performance.now() time). */
  private recordedLatencyMs = 0;
  private recordedAt = 0;
  /** Dropped or replaced: its channel closes when its calls end. */
  retired = false;

  constructor(
    readonly address: string,
    /** What the worker said of itself; its models and reload as it last said them (see
     * WorkerSet.follow). */
    public info: GetWorkerInfoResponse,
    readonly channel: C,
    /** performance.now() by default; tests pass their own. */
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** What tells workers apart, across hosts too. */
  get key(): string {
    return `${this.info.instanceId}/${this.info.pid}`;
  }

  /** The server's last reload this worker had done when it said which models it has. */
  get reload(): number {
    return this.info.reload;
  }

  /** How the worker names itself in the `tms-worker` trailer. */
  get identity(): string {
    return this.key;
  }

  /** Whether this worker has `model` ("" for calls about the whole server). */
  has(model: string): boolean {
    return !model || this.info.models.length === 0 || this.info.models.includes(model);
  }

  /** Recent latency in milliseconds, faded with the time since it was recorded (0: no call
   * answered yet); what balancers read. */
  get latencyMs(): number {
    return this.latencyAt(this.clock());
  }

  /** The recorded latency at `now`: it fades with a time constant of LATENCY_DECAY_MS (about
   * ten seconds) while no call on the worker ends. */
  latencyAt(now: number): number {
    const elapsed = Math.max(0, now - this.recordedAt);
    return this.recordedLatencyMs * Math.exp(-elapsed / LATENCY_DECAY_MS);
  }

  /** Fold one call's latency in, starting from the faded latency: a slower call counts at once,
   * faster ones pull the average down with a time constant of one second ("peak EWMA"). */
  recordLatency(ms: number, now: number): void {
    const current = this.latencyAt(now);
    if (ms >= current) {
      this.recordedLatencyMs = ms;
    } else {
      const weight = 1 - Math.exp(-Math.max(0, now - this.recordedAt) / 1_000);
      this.recordedLatencyMs = current + (ms - current) * weight;
    }
    this.recordedAt = now;
  }

  describe(): WorkerInfo {
    const { instanceId, pid, workerIndex, workerCount, device, models } = this.info;
    return {
      address: this.address,
      instanceId,
      pid,
      index: workerIndex,
      count: workerCount,
      device,
      models: [...models],
      inFlight: this.inFlight,
      calls: this.calls,
      reportedInFlight: this.load?.inFlight,
      reportedQueued: this.load?.queued,
    };
  }
}

/** The known workers, by key, and what each address's server said about itself. */
export class WorkerSet<C = unknown> {
  private readonly byKey = new Map<string, Worker<C>>();
  /** address -> [instance id, worker count] of the server last seen there. */
  private readonly servers = new Map<string, [string, number]>();

  get size(): number {
    return this.byKey.size;
  }

  workers(): Worker<C>[] {
    return [...this.byKey.values()].sort(
      (a, b) => a.address.localeCompare(b.address) || a.info.workerIndex - b.info.workerIndex || a.info.pid - b.info.pid,
    );
  }

  /** Take `worker` in; returns the workers to close: `worker` itself when it is known
   * already, or the workers of a server that restarted at its address. */
  add(worker: Worker<C>): Worker<C>[] {
    if (this.byKey.has(worker.key)) return [worker];
    let stale: Worker<C>[] = [];
    const seen = this.servers.get(worker.address);
    if (seen !== undefined && seen[0] !== worker.info.instanceId) {
      stale = [...this.byKey.values()].filter((w) => w.address === worker.address);
      for (const old of stale) this.byKey.delete(old.key);
    }
    this.servers.set(worker.address, [worker.info.instanceId, worker.info.workerCount]);
    this.byKey.set(worker.key, worker);
    return stale;
  }

  /** Take in the models `worker` serves now (and the reload it has done), from its
   * GetWorkerInfo answer; false, changing nothing, when another process answered. */
  follow(worker: Worker<C>, info: GetWorkerInfoResponse): boolean {
    if (info.instanceId !== worker.info.instanceId || info.pid !== worker.info.pid) return false;
    worker.info = info;
    return true;
  }

  /** Forget `worker` (if this very object is known); whether it was. */
  remove(worker: Worker<C>): boolean {
    if (this.byKey.get(worker.key) !== worker) return false;
    this.byKey.delete(worker.key);
    return true;
  }

  /** Whether every worker of the server at `address` is known. */
  complete(address: string): boolean {
    const seen = this.servers.get(address);
    if (seen === undefined) return false;
    const [instanceId, count] = seen;
    let found = 0;
    for (const w of this.byKey.values()) {
      if (w.address === address && w.info.instanceId === instanceId) found += 1;
    }
    return found >= count;
  }

  /** The addresses whose server's workers are not all known. */
  missing(addresses: readonly string[]): string[] {
    return addresses.filter((address) => !this.complete(address));
  }

  /** How many workers the server at `address` said it runs (undefined: not seen yet). */
  expected(address: string): number | undefined {
    return this.servers.get(address)?.[1];
  }

  /** Workers a call for `model` may go to: those that have it (all, when none has it: any
   * worker then says it has no such model), without those in `exclude` unless that leaves
   * none. */
  candidates(exclude: ReadonlySet<string>, model: string): Worker<C>[] {
    let workers = [...this.byKey.values()];
    if (model) {
      const having = workers.filter((w) => w.has(model));
      if (having.length > 0) workers = having;
    }
    const fresh = workers.filter((w) => !exclude.has(w.key));
    return fresh.length > 0 ? fresh : workers;
  }

  toString(): string {
    const shown = this.workers().map((w) => `${w.address} pid ${w.info.pid}: ${w.inFlight} in flight, ${w.calls} calls`);
    return `WorkerSet [${shown.join(", ")}]`;
  }
}
