/**
 * The worker pool: finds every worker process behind the targets and sends calls to them.
 *
 * A TMS server runs several worker processes on one port (SO_REUSEPORT), and the kernel hands
 * each new connection to one of them. The pool opens connections and asks each who answered
 * (GetWorkerInfo) until it holds one to every worker of every server (at most 8 x workers + 8
 * connections per address at the start, 4 x workers + 4 in a background search); a connection
 * that does not answer (a stalled worker) costs the start a second, not its connect timeout,
 * and an address that refuses connections (nothing listens there) is given up at once.
 * Calls go to the worker the balancer picks, among those that have the call's model; a call
 * that fails with a code the retry policy names, or with the server's RetryInfo, is sent
 * again, to another worker, after a backoff (or the RetryInfo delay), within the call's
 * deadline. A worker whose call fails UNAVAILABLE, or whose `tms-worker` trailer names another
 * process (grpc-js reconnected its channel and reached another worker), is dropped; the pool
 * looks for missing workers in the background every refreshIntervalMs (every 250 ms while some
 * are missing), at once after a drop, and on demand when a call finds none (which waits for a
 * search under way no longer than its deadline and AbortSignal allow). When a worker's load
 * report says it has done a reload of its server newer than the pool knew (which may change
 * the models a worker serves), the background search asks that server's workers again which
 * models they serve (GetWorkerInfo), at once, so calls follow the model.
 */
import { setMaxListeners } from "node:events";

import { Metadata, status } from "@grpc/grpc-js";

import type { Balancer } from "./balancers.js";
import { ConnectError, TmsError } from "./errors.js";
import { GetWorkerInfoResponse } from "./gen/tms/v1/model_service.js";
import { readTrailers } from "./load.js";
import { Attempts, type RetryPolicy } from "./retry.js";
import { resolveTargets } from "./targets.js";
import {
  type Connection,
  type Connector,
  type Reply,
  type Request,
  type Stream,
  Transport,
  type TlsOptions,
} from "./transport.js";
import { Worker, type WorkerInfo, WorkerSet } from "./workers.js";

const WORKER_INFO = "/tms.v1.ModelService/GetWorkerInfo";
const IDENTIFY_TIMEOUT_MS = 5_000; // one GetWorkerInfo while healing
/** How long the start waits for one connection's GetWorkerInfo while half its connect timeout
 * would be left after it (the last connection waits for the rest): a stalled worker costs a
 * second, a slow but live server (far away, overloaded) still answers. */
const ANSWER_WAIT_MS = 1_000;
const EMPTY_RETRY_GAP_MS = 100; // between searches on demand that find no worker
/** The most the start waits to learn whether an address refuses connections. */
const PROBE_TIMEOUT_MS = 2_000;
/** Codes with which a server refuses the client's credentials: waiting would not help. */
const REFUSED = new Set([status.UNAUTHENTICATED, status.PERMISSION_DENIED]);

function closedError(): TmsError {
  return new TmsError(status.FAILED_PRECONDITION, "this client is closed; make a new one to call again");
}

/** What the pool needs of the client's options, every field set. */
export interface PoolSettings {
  targets: string[];
  connectTimeoutMs: number;
  balancer: Balancer;
  retry: RetryPolicy;
  discoveryAttempts: number | undefined;
  refreshIntervalMs: number;
  tls: TlsOptions | boolean | undefined;
  maxMessageBytes: number;
  /** Sent with every call, discovery included (the bearer token). */
  metadata: Metadata;
  /** At the start, wait for an address that refuses connections (a server still starting)
   * instead of failing at once (default false). */
  waitForServer?: boolean;
  /** How connections are opened (default: grpc-js channels with tls and maxMessageBytes). */
  connector?: Connector;
  /** The start's wait for one connection's answer (default ANSWER_WAIT_MS; tests shorten
   * it). */
  answerWaitMs?: number;
}

/** One call as the pool sends it. */
export interface PoolCall {
  path: string;
  data: Buffer;
  /** The model it is about ("" for the whole server). */
  model: string;
  /** Deadline of all attempts together, in milliseconds (null: none). */
  timeoutMs: number | null;
  metadata?: Metadata;
  signal?: AbortSignal;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `promise`, waited for no longer than `timeoutMs` (then DEADLINE_EXCEEDED) or until `signal`
 * aborts (then its reason); the promise itself goes on. */
function within<T>(promise: Promise<T>, timeoutMs: number, signal?: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const settle = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    const onAbort = (): void => {
      settle();
      reject(signal?.reason);
    };
    const expire = (): void => {
      settle();
      reject(new TmsError(status.DEADLINE_EXCEEDED, "the call's deadline passed while looking for workers"));
    };
    // (no timer without a deadline: setTimeout takes Infinity, or more than 2^31 - 1 ms, as 1)
    const timer = timeoutMs < 2 ** 31 ? setTimeout(expire, Math.max(0, timeoutMs)) : undefined;
    signal?.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        settle();
        resolve(value);
      },
      (error: unknown) => {
        settle();
        reject(error);
      },
    );
  });
}

/** A stream's replies, calling `end` once they end: with the trailers, or with the failure,
 * thrown as `failure` says. */
async function* relay(
  replies: AsyncIterator<Buffer, Metadata>,
  end: (trailers?: Metadata, error?: unknown) => void,
  failure: (error: unknown) => unknown,
): AsyncGenerator<Buffer, Metadata> {
  try {
    for (;;) {
      const next = await replies.next();
      if (next.done) {
        end(next.value);
        return next.value;
      }
      yield next.value;
    }
  } catch (error) {
    end(undefined, error);
    throw failure(error);
  }
}

export class WorkerPool {
  readonly workers = new WorkerSet<Connection>();
  private readonly connector: Connector;
  private closed = false;
  private started: Promise<void> | undefined;
  private searching: Promise<void> | undefined;
  private searchAfter = 0;
  private wake: (() => void) | undefined;
  /** Woken while it was not waiting: the background search runs again at once. */
  private woken = false;
  private healTimer: NodeJS.Timeout | undefined;
  /** Workers to ask which models they serve (their server reloaded). */
  private readonly changed = new Set<Worker<Connection>>();
  /** Server instance id -> the last reload any of its workers said it had done. */
  private readonly reloads = new Map<string, number>();
  /** At the start: address -> whether it refused the connection. */
  private readonly refused = new Map<string, boolean>();
  /** Aborted by close(): ends the calls and streams in flight, and the GetWorkerInfo calls a
   * search is waiting for. */
  private readonly closing = new AbortController();

  constructor(readonly settings: PoolSettings) {
    this.connector = settings.connector ?? new Transport(settings.tls, settings.maxMessageBytes);
    setMaxListeners(0, this.closing.signal); // one listener per call waited for, however many
  }

  toString(): string {
    return `WorkerPool targets=${this.settings.targets.join(",")} ${this.workers}`;
  }

  /** Find the workers within connectTimeoutMs (failing at once where every address refuses
   * connections, unless waitForServer, and giving up on a connection that does not answer for
   * another: see find) and start the background search; once, however often it is called.
   * Once the pool is closed it rejects at once (FAILED_PRECONDITION), and so do calls and
   * streams, which begin with it; a start under way when the pool closes rejects so too, at
   * once. */
  start(): Promise<void> {
    if (this.closed) return Promise.reject(closedError());
    this.started ??= this.firstSearch().catch((error: unknown) => {
      this.started = undefined; // the next call tries again
      throw error;
    });
    return this.started;
  }

  private async firstSearch(): Promise<void> {
    this.refused.clear();
    await this.search(this.settings.connectTimeoutMs, true);
    if (this.closed) throw closedError();
    const refused = [...this.refused].filter(([, said]) => said).map(([address]) => address);
    if (this.workers.size === 0 && refused.length > 0 && refused.length === this.refused.size) {
      throw new ConnectError(`connection refused at ${refused.join(", ")}: is tms-server running?`, refused);
    }
    if (this.workers.size === 0) {
      const hint =
        this.settings.tls === undefined || this.settings.tls === false
          ? "is it running, and does it serve TLS (then pass tls)?"
          : "is it running, and do the CA, server name and client certificate fit it?";
      throw new ConnectError(
        `no TMS server answered at ${this.settings.targets.join(", ")} within ${this.settings.connectTimeoutMs} ms; ${hint}`,
      );
    }
    void this.heal();
  }

  /** Forget every worker, close every connection and stop looking for workers: the calls and
   * streams in flight end at once (FAILED_PRECONDITION, as later ones fail), and so do the calls
   * a search is waiting for (CANCELLED), and with them the search. */
  close(): void {
    this.closed = true;
    this.closing.abort();
    this.wake?.();
    for (const worker of this.workers.workers()) {
      this.workers.remove(worker);
      worker.channel.close();
    }
  }

  workerInfos(): WorkerInfo[] {
    return this.workers.workers().map((w) => w.describe());
  }

  // -- finding workers ------------------------------------------------------------------------

  /** Look for missing workers at every address; one search at a time. A background search
   * waits `timeoutMs` for each connection's answer; the `start` has `timeoutMs` in all. */
  search(timeoutMs = IDENTIFY_TIMEOUT_MS, start = false): Promise<void> {
    this.searching ??= this.discover(Math.max(100, timeoutMs), start).finally(() => {
      this.searching = undefined;
    });
    return this.searching;
  }

  private async discover(timeoutMs: number, start: boolean): Promise<void> {
    const deadline = start ? Date.now() + timeoutMs : undefined;
    const addresses = await resolveTargets(this.settings.targets);
    await Promise.all(this.workers.missing(addresses).map((address) => this.find(address, timeoutMs, deadline)));
  }

  /** Open connections to `address` until every worker of its server is known or the attempts
   * run out. A background search waits up to `timeoutMs` for each answer and ends at the
   * first connection that does not answer. The start (by `startDeadline`, `timeoutMs` after it
   * began) first gives up an address that refuses connections (nothing listens there) at once,
   * unless the settings say waitForServer; then it waits ANSWER_WAIT_MS for each answer while
   * half of `timeoutMs` would be left after it, the last connection for the rest; a connection
   * that does not answer (stalled, or failing) ends its search here once it holds a worker of
   * this address (the background search finds the rest), and until then it opens another, each
   * waiting for a server that is starting, while time is left. */
  private async find(address: string, timeoutMs: number, startDeadline?: number): Promise<void> {
    const start = startDeadline !== undefined;
    if (start && !this.settings.waitForServer && this.connector.refuses !== undefined) {
      const probeMs = Math.min(timeoutMs, PROBE_TIMEOUT_MS);
      const refused = await this.connector.refuses(address, probeMs, this.closing.signal);
      this.refused.set(address, refused);
      if (refused) return;
    }
    let held = false;
    for (let opened = 0; opened < this.attemptsFor(this.workers.expected(address) ?? 1, start); opened++) {
      if (this.workers.complete(address) || this.closed) return;
      let waitMs = timeoutMs;
      if (start) {
        const leftMs = startDeadline - Date.now();
        const answerMs = this.settings.answerWaitMs ?? ANSWER_WAIT_MS;
        waitMs = leftMs - answerMs >= timeoutMs / 2 ? answerMs : leftMs;
      }
      if (waitMs <= 0) return;
      const worker = await this.identify(address, waitMs, start && !held);
      if (worker === undefined) {
        if (!start || held) return;
        continue;
      }
      held = true;
      for (const old of this.workers.add(worker)) this.retire(old);
      if (this.closed) this.close();
    }
  }

  /** Connections to open at an address to find `expected` workers. The kernel hands each
   * new connection to a worker at random: the start opens up to eight per worker and eight
   * more (a worker missed in about one start in 100,000 at 3 workers), a background search
   * half that (it runs again soon while workers are missing, and a worker that is not
   * listening costs it every connection). */
  private attemptsFor(expected: number, start: boolean): number {
    return this.settings.discoveryAttempts ?? (start ? 8 : 4) * (expected + 1);
  }

  /** Open a connection to `address` and ask who answered; undefined if nobody did. A server
   * that refuses the credentials rejects (UNAUTHENTICATED, PERMISSION_DENIED). */
  private async identify(address: string, timeoutMs: number, wait: boolean): Promise<Worker<Connection> | undefined> {
    const channel = this.connector.open(address);
    let reply: Reply;
    try {
      reply = await channel.unary({
        path: WORKER_INFO,
        data: Buffer.alloc(0),
        deadline: Date.now() + timeoutMs,
        metadata: this.settings.metadata,
        waitForReady: wait,
        signal: this.closing.signal,
      });
    } catch (error) {
      channel.close();
      if (error instanceof TmsError && REFUSED.has(error.code)) throw error;
      return undefined;
    }
    return new Worker(address, GetWorkerInfoResponse.decode(reply.data), channel);
  }

  /** The background search, until the pool closes: soon while workers are missing, else
   * every refreshIntervalMs, and at once when a worker is dropped or says its server
   * reloaded (then, after looking for missing workers, it asks the workers of that server
   * which models they serve). */
  private async heal(): Promise<void> {
    const interval = this.settings.refreshIntervalMs;
    while (!this.closed) {
      let complete = false;
      try {
        complete = this.workers.missing(await resolveTargets(this.settings.targets)).length === 0;
      } catch {
        complete = false;
      }
      if (!this.woken) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          this.healTimer = setTimeout(resolve, complete ? interval : Math.min(interval, 250));
          this.healTimer.unref(); // a client left open does not keep the process alive
        });
        clearTimeout(this.healTimer);
        this.wake = undefined;
      }
      this.woken = false;
      if (this.closed) return;
      try {
        await this.search();
      } catch {
        // a refused token or a server away: the next round tries again
      }
      await Promise.all([...this.changed].map((worker) => this.followModels(worker)));
    }
  }

  /** Have the background search run now, or once more as soon as its round ends. */
  private wakeHeal(): void {
    this.woken = true;
    this.wake?.();
  }

  /** Ask `worker`, whose server has reloaded, which models it serves now. One that does not
   * answer, or has not done its server's last reload yet, is asked again next round. */
  private async followModels(worker: Worker<Connection>): Promise<void> {
    if (worker.retired) {
      this.changed.delete(worker); // its channel closes once its calls end: ask no more
      return;
    }
    worker.inFlight += 1; // its channel stays open meanwhile
    let reply: Reply;
    let info: GetWorkerInfoResponse;
    try {
      reply = await worker.channel.unary({
        path: WORKER_INFO,
        data: Buffer.alloc(0),
        deadline: Date.now() + IDENTIFY_TIMEOUT_MS,
        metadata: this.settings.metadata,
        signal: this.closing.signal,
      });
      info = GetWorkerInfoResponse.decode(reply.data);
    } catch (error) {
      this.failed(worker, error);
      return;
    } finally {
      this.done(worker);
    }
    this.workers.follow(worker, info);
    if (worker.reload >= (this.reloads.get(worker.info.instanceId) ?? 0)) this.changed.delete(worker);
    this.observe(worker, reply.trailers);
  }

  /** `worker` says it has done reload number `reload` of its server, after it said which
   * models it serves: have the background search ask it at once (followModels), and, the
   * first time its server says so, all the server's workers (one asked before it had done the
   * reload is asked again when its own answers say it has). */
  private reloaded(worker: Worker<Connection>, reload: number): void {
    const { instanceId } = worker.info;
    if (reload > (this.reloads.get(instanceId) ?? 0)) {
      this.reloads.set(instanceId, reload);
      for (const other of this.workers.workers()) {
        if (other.info.instanceId === instanceId) this.changed.add(other);
      }
    }
    this.changed.add(worker);
    this.wakeHeal();
  }

  private drop(worker: Worker<Connection>): void {
    if (this.workers.remove(worker)) this.wakeHeal();
    this.changed.delete(worker);
    this.retire(worker);
  }

  /** Close the channel of a worker no longer known once its calls have ended. */
  private retire(worker: Worker<Connection>): void {
    worker.retired = true;
    if (worker.inFlight === 0) worker.channel.close();
  }

  // -- calls ----------------------------------------------------------------------------------

  /** Send `call` to a worker that has its model, retrying as the policy says; the reply. When
   * the pool closes, it rejects at once, FAILED_PRECONDITION. */
  async call(call: PoolCall): Promise<Reply> {
    const [signal, release] = this.bind(call.signal);
    try {
      return await this.send(call, signal);
    } catch (error) {
      throw this.closed ? closedError() : error;
    } finally {
      release();
    }
  }

  /** `signal`, also aborted when the pool closes, and a function that stops following both
   * once the call is over (AbortSignal.any would hold every call's signal while the pool
   * lives). */
  private bind(signal?: AbortSignal): [AbortSignal, () => void] {
    const bound = new AbortController();
    const abort = (event: Event): void => bound.abort((event.target as AbortSignal).reason);
    for (const source of [signal, this.closing.signal]) {
      if (source?.aborted) bound.abort(source.reason);
      else source?.addEventListener("abort", abort, { once: true });
    }
    const release = (): void => {
      signal?.removeEventListener("abort", abort);
      this.closing.signal.removeEventListener("abort", abort);
    };
    return [bound.signal, release];
  }

  private async send(call: PoolCall, signal: AbortSignal): Promise<Reply> {
    await this.start();
    const attempts = new Attempts(this.settings.retry, call.timeoutMs);
    const metadata = this.metadataOf(call);
    for (;;) {
      signal.throwIfAborted();
      try {
        attempts.begin();
        const worker = this.take(attempts, call.model) ?? (await this.searchFor(attempts, call.model, signal));
        attempts.tried.add(worker.key);
        const deadline = attempts.wallDeadline();
        return await this.attempt(worker, { path: call.path, data: call.data, deadline, metadata, signal });
      } catch (error) {
        signal.throwIfAborted();
        if (!(error instanceof TmsError)) throw error;
        await sleep(attempts.delayAfter(error), signal);
      }
    }
  }

  /** When no worker is known: look for workers, but not again within EMPTY_RETRY_GAP_MS of a
   * search that found none (callers failing fast must not turn into a storm of connections).
   * A search under way (the background's, which may wait seconds on a connection that does not
   * answer) is waited for no longer than the call's deadline and `signal` allow. */
  private async searchFor(attempts: Attempts, model: string, signal?: AbortSignal): Promise<Worker<Connection>> {
    let worker: Worker<Connection> | undefined;
    if (performance.now() >= this.searchAfter) {
      const remaining = attempts.remaining();
      await within(this.search(Math.min(remaining, IDENTIFY_TIMEOUT_MS)), remaining, signal);
      worker = this.take(attempts, model);
    }
    if (worker === undefined) {
      this.searchAfter = performance.now() + EMPTY_RETRY_GAP_MS;
      throw new TmsError(status.UNAVAILABLE, `no TMS worker reachable at ${this.settings.targets.join(", ")}`);
    }
    return worker;
  }

  /** A worker for the next attempt (one not tried yet if possible), its count raised. */
  private take(attempts: Attempts, model: string): Worker<Connection> | undefined {
    const candidates = this.workers.candidates(attempts.tried, model);
    if (candidates.length === 0) return undefined;
    const worker = this.settings.balancer.pick(candidates);
    worker.inFlight += 1;
    worker.calls += 1;
    return worker;
  }

  private async attempt(worker: Worker<Connection>, request: Request): Promise<Reply> {
    const started = performance.now();
    try {
      const reply = await worker.channel.unary(request);
      worker.recordLatency(performance.now() - started, performance.now());
      this.observe(worker, reply.trailers);
      return reply;
    } catch (error) {
      worker.recordLatency(performance.now() - started, performance.now());
      this.failed(worker, error);
      throw error;
    } finally {
      this.done(worker);
    }
  }

  /** Open a streaming call on one worker that has `call.model`, picked as for a call (found by
   * a search when none is known); `call.timeoutMs` bounds the whole stream. It is not retried:
   * its replies go to the caller as they come, and the model may keep state for it. While it
   * lasts it counts as one call in flight of its worker; when it ends its trailers are read,
   * and when it fails UNAVAILABLE the worker is dropped, as after any call. When the pool
   * closes, it is cancelled, and it fails at once, FAILED_PRECONDITION (its opening too). */
  async stream(call: Omit<PoolCall, "data" | "signal">): Promise<Stream> {
    const failure = (error: unknown): unknown => (this.closed ? closedError() : error);
    let worker: Worker<Connection>;
    const attempts = new Attempts(this.settings.retry, call.timeoutMs);
    try {
      await this.start();
      attempts.begin();
      worker = this.take(attempts, call.model) ?? (await this.searchFor(attempts, call.model, this.closing.signal));
    } catch (error) {
      throw failure(error);
    }
    let stream: Stream;
    const cancel = (): void => {
      stream.cancel();
      end();
    };
    let open = true;
    const end = (trailers?: Metadata, error?: unknown): void => {
      if (!open) return;
      open = false;
      this.closing.signal.removeEventListener("abort", cancel);
      if (trailers !== undefined) this.observe(worker, trailers);
      if (error !== undefined) this.failed(worker, error);
      this.done(worker);
    };
    try {
      stream = worker.channel.stream({ path: call.path, deadline: attempts.wallDeadline(), metadata: this.metadataOf(call) });
    } catch (error) {
      end(undefined, error);
      throw failure(error);
    }
    this.closing.signal.addEventListener("abort", cancel, { once: true });
    const replies = relay(stream.replies, end, failure);
    return { write: (data) => stream.write(data), end: () => stream.end(), cancel, replies };
  }

  private metadataOf(call: Pick<PoolCall, "metadata">): Metadata {
    const metadata = this.settings.metadata.clone();
    if (call.metadata !== undefined) metadata.merge(call.metadata);
    return metadata;
  }

  /** What a failed call says of its worker: its load, and whether it is gone. */
  private failed(worker: Worker<Connection>, error: unknown): void {
    if (!(error instanceof TmsError)) return;
    this.observe(worker, error.metadata);
    if (error.code === status.UNAVAILABLE) this.drop(worker);
  }

  /** A call of `worker` is over: close its channel if it was retired meanwhile. */
  private done(worker: Worker<Connection>): void {
    worker.inFlight -= 1;
    if (worker.retired && worker.inFlight === 0) worker.channel.close();
  }

  private observe(worker: Worker<Connection>, trailers: Metadata): void {
    const { identity, load } = readTrailers(trailers);
    if (load !== undefined) {
      worker.load = load;
      if (load.reload > worker.reload) this.reloaded(worker, load.reload);
    }
    // grpc-js reconnected this channel and reached another process.
    if (identity !== undefined && identity !== worker.identity) this.drop(worker);
  }
}
