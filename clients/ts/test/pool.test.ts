/** The worker pool over a scripted server: no sockets, every decision visible in its state. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Metadata, status } from "@grpc/grpc-js";

import { RoundRobin } from "../src/balancers.js";
import { type ConnectError, TmsError } from "../src/errors.js";
import { GetWorkerInfoResponse } from "../src/gen/tms/v1/model_service.js";
import { type PoolSettings, WorkerPool } from "../src/pool.js";
import { RetryPolicy } from "../src/retry.js";
import type { Connection, Connector, Reply, Request } from "../src/transport.js";
import { detailsTrailers, orca } from "./details.js";

/** A server whose connections land on its workers in the order `landings` gives (then in
 * turn); a worker in `dead` fails every call UNAVAILABLE, one in `stalled` answers none (its
 * calls fail DEADLINE_EXCEEDED at their deadline, as grpc-js's do). Replies carry the worker's
 * pid; a worker that has done a reload (`reloads`) says so in GetWorkerInfo and, as a load
 * report, in the trailers of every answer. */
class ScriptedServer implements Connector {
  readonly dead = new Set<number>();
  readonly stalled = new Set<number>();
  /** Each GetWorkerInfo's wait (ms to its deadline) and wait-for-ready, in order. */
  readonly asked: { waitMs: number; ready: boolean }[] = [];
  private readonly stalls = new Set<() => void>();
  /** Workers that fail every model call with this error. */
  readonly failing = new Map<number, TmsError>();
  /** pid -> the server's last reload the worker has done. */
  readonly reloads: Record<number, number> = {};
  refuse = false;
  /** Nothing listens: every connection is refused. */
  down = false;
  probed = 0;
  opened = 0;
  paths: string[] = [];

  constructor(
    public pids: number[],
    private landings: number[] = [],
    readonly models: Record<number, string[]> = {},
  ) {}

  async refuses(): Promise<boolean> {
    this.probed += 1;
    return this.down;
  }

  open(): Connection {
    const index = this.landings.shift() ?? this.opened % this.pids.length;
    const pid = this.pids[index];
    this.opened += 1;
    return {
      unary: async (request: Request): Promise<Reply> => {
        this.paths.push(request.path);
        if (request.path.endsWith("GetWorkerInfo")) {
          this.asked.push({ waitMs: request.deadline - Date.now(), ready: request.waitForReady === true });
        }
        if (this.stalled.has(pid)) await this.stall(request.deadline, request.signal);
        const trailers = new Metadata();
        trailers.set("tms-worker", `id/${pid}`);
        const reload = this.reloads[pid] ?? 0;
        if (reload > 0) trailers.set("tms-load-bin", orca({ in_flight: 0, queued: 0, reload }));
        if (this.refuse) throw new TmsError(status.UNAUTHENTICATED, "bad token");
        if (this.dead.has(pid) || !this.pids.includes(pid)) throw new TmsError(status.UNAVAILABLE, "gone");
        if (request.path.endsWith("GetWorkerInfo")) {
          const info = GetWorkerInfoResponse.encode(
            GetWorkerInfoResponse.fromPartial({
              instanceId: "id",
              pid,
              workerIndex: index,
              workerCount: this.pids.length,
              models: this.models[pid] ?? [],
              reload,
            }),
          );
          return { data: Buffer.from(info.finish()), trailers };
        }
        const failure = this.failing.get(pid);
        if (failure !== undefined) {
          const metadata = failure.metadata.clone();
          for (const [key, values] of Object.entries(trailers.toJSON())) metadata.set(key, values[0]!);
          throw new TmsError(failure.code, failure.details, metadata);
        }
        return { data: Buffer.from(String(pid)), trailers };
      },
      stream: () => {
        throw new Error("no streams here (see stream.test.ts)");
      },
      close: () => undefined,
    };
  }

  /** Calls a stalled worker holds now. */
  get stalling(): number {
    return this.stalls.size;
  }

  private stall(deadline: number, signal?: AbortSignal): Promise<never> {
    return new Promise((_, reject) => {
      const end = (error: TmsError): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", cancelled);
        this.stalls.delete(cancel);
        reject(error);
      };
      const cancel = (): void => end(new TmsError(status.CANCELLED, "server closed"));
      const cancelled = (): void => end(new TmsError(status.CANCELLED, "cancelled by the client"));
      const expire = (): void => end(new TmsError(status.DEADLINE_EXCEEDED, "deadline exceeded"));
      const timer = setTimeout(expire, deadline - Date.now());
      this.stalls.add(cancel);
      if (signal?.aborted) cancelled();
      else signal?.addEventListener("abort", cancelled, { once: true });
    });
  }

  /** End the calls a stalled worker holds (a background search's wait would outlast the test). */
  hangUp(): void {
    for (const cancel of [...this.stalls]) cancel();
  }
}

function pool(server: ScriptedServer, settings: Partial<PoolSettings> = {}): WorkerPool {
  return new WorkerPool({
    targets: ["h:1"],
    connectTimeoutMs: 1_000,
    balancer: new RoundRobin(),
    retry: RetryPolicy.default().withBackoff(1, 5),
    discoveryAttempts: undefined,
    refreshIntervalMs: 20,
    tls: undefined,
    maxMessageBytes: 1 << 20,
    metadata: new Metadata(),
    connector: server,
    ...settings,
  });
}

async function callPid(workers: WorkerPool, model = ""): Promise<number> {
  const reply = await workers.call({ path: "/tms.v1.ModelService/RunImage", data: Buffer.alloc(0), model, timeoutMs: 1_000 });
  return Number(reply.data.toString());
}

describe("worker pool", () => {
  it("opens connections until it holds one per worker", async () => {
    const server = new ScriptedServer([10, 11, 12], [0, 0, 1, 0, 2]);
    const workers = pool(server);
    await workers.start();
    assert.equal(server.opened, 5);
    assert.match(String(workers), /pid 10: .*pid 11: .*pid 12: /);
    assert.deepEqual(new Set(await Promise.all([1, 2, 3].map(() => callPid(workers)))), new Set([10, 11, 12]));
    workers.close();
  });

  it("gives up on an address after 8 x workers + 8 connections at the start", async () => {
    const server = new ScriptedServer([10, 11], Array(50).fill(0));
    const workers = pool(server);
    await workers.start();
    assert.equal(server.opened, 8 * 2 + 8);
    workers.close();
  });

  it("waits 1 s for each connection's answer at the start, not the connect timeout", async () => {
    const server = new ScriptedServer([10, 11]);
    const workers = pool(server, { connectTimeoutMs: 10_000 });
    await workers.start();
    assert.equal(server.asked.length, 2);
    for (const { waitMs } of server.asked) assert.ok(waitMs > 900 && waitMs <= 1_000, `waited ${waitMs} ms`);
    workers.close();
  });

  it("ends the start at a stalled worker once it holds a live one, well within the connect timeout", async () => {
    const server = new ScriptedServer([10, 11], [0, 1]);
    server.stalled.add(11);
    const workers = pool(server, { connectTimeoutMs: 10_000, answerWaitMs: 50 });
    const started = performance.now();
    await workers.start();
    assert.ok(performance.now() - started < 1_000, `took ${performance.now() - started} ms`);
    assert.deepEqual(workers.workerInfos().map((w) => w.pid), [10]);
    assert.equal(server.opened, 2); // no connection after the one that did not answer
    assert.equal(await callPid(workers), 10);
    workers.close();
    server.hangUp();
  });

  it("opens another connection when the start's first lands on a stalled worker", async () => {
    const server = new ScriptedServer([10, 11], [1, 1, 0, 1]);
    server.stalled.add(11);
    const workers = pool(server, { connectTimeoutMs: 10_000, answerWaitMs: 20 });
    const started = performance.now();
    await workers.start();
    assert.ok(performance.now() - started < 1_000, `took ${performance.now() - started} ms`);
    assert.deepEqual(workers.workerInfos().map((w) => w.pid), [10]);
    // 20 ms each; each waits for a server that is starting until one answers
    assert.deepEqual(
      server.asked.map(({ waitMs, ready }) => [Math.ceil(waitMs / 20) * 20, ready]),
      [[20, true], [20, true], [20, true], [20, false]],
    );
    workers.close();
    server.hangUp();
  });

  it("gives up when no connection answers within the connect timeout", async () => {
    const server = new ScriptedServer([10]);
    server.stalled.add(10);
    const workers = pool(server, { connectTimeoutMs: 300, answerWaitMs: 60 });
    const started = performance.now();
    await assert.rejects(workers.start(), { name: "ConnectError", message: /within 300 ms/ });
    const took = performance.now() - started;
    assert.ok(took >= 280 && took < 1_000, `took ${took} ms`);
    // 60 ms while half the connect timeout would be left after it (twice), then what is left
    // (about 180 ms, less on a busy machine; and when a timer fires a millisecond early, one
    // more for the millisecond left)
    const waits = server.asked.map(({ waitMs }) => waitMs);
    // (each short one seen by the server a little under 60 ms: time passes as it is sent)
    assert.ok(waits.slice(0, 2).every((ms) => ms > 30 && ms <= 60), `waited ${waits.join(", ")} ms`);
    const rest = waits.slice(2);
    // (up to a few ms more when the short waits' timers fired early)
    assert.ok(rest.length >= 1 && rest[0]! > 100 && rest.every((ms) => ms <= 185), `waited ${waits.join(", ")} ms`);
    workers.close();
    server.hangUp();
  });

  it("retries on another worker, drops the dead one, and finds its successor", async () => {
    const server = new ScriptedServer([10, 11]);
    const workers = pool(server);
    await workers.start();
    server.dead.add(10);
    const pids = await Promise.all([1, 2, 3, 4].map(() => callPid(workers)));
    assert.deepEqual(new Set(pids), new Set([11]));
    assert.deepEqual(workers.workerInfos().map((w) => w.pid), [11]);
    server.pids = [12, 11]; // the supervisor replaced worker 0
    for (let i = 0; i < 100 && workers.workerInfos().length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(workers.workerInfos().map((w) => w.pid).sort(), [11, 12]);
    workers.close();
  });

  it("drops a worker whose connection now reaches another process", async () => {
    const server = new ScriptedServer([10, 11]);
    const workers = pool(server);
    await workers.start();
    const [first] = workers.workers.workers();
    const original = first.channel;
    const moved: Connection = {
      unary: async (request) => {
        const reply = await original.unary(request);
        reply.trailers.set("tms-worker", "id/99");
        return reply;
      },
      stream: (request) => original.stream(request),
      close: () => undefined,
    };
    Object.assign(first, { channel: moved });
    await Promise.all([1, 2].map(() => callPid(workers)));
    assert.equal(workers.workers.workers().includes(first), false);
    workers.close();
  });

  it("waits for a search under way no longer than the call's deadline or signal", async () => {
    const server = new ScriptedServer([10]);
    const workers = pool(server, { retry: RetryPolicy.never() });
    await workers.start();
    server.pids = [20]; // the server restarted, and its new worker does not answer
    server.stalled.add(20);
    await assert.rejects(callPid(workers), (e: TmsError) => e.code === status.UNAVAILABLE); // drops 10
    // the background search waits five seconds for the stalled worker's answer
    for (let i = 0; i < 100 && server.asked.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(server.asked.length === 2 && server.asked[1]!.waitMs > 4_000, `asked ${JSON.stringify(server.asked)}`);
    const call = { path: "/tms.v1.ModelService/RunImage", data: Buffer.alloc(0), model: "" };
    let started = performance.now();
    await assert.rejects(workers.call({ ...call, timeoutMs: 200 }), (e: TmsError) => e.code === status.DEADLINE_EXCEEDED);
    let took = performance.now() - started;
    assert.ok(took >= 190 && took < 1_000, `took ${took} ms`);
    started = performance.now();
    await assert.rejects(workers.call({ ...call, timeoutMs: null, signal: AbortSignal.timeout(200) }), { name: "TimeoutError" });
    took = performance.now() - started;
    assert.ok(took >= 190 && took < 1_000, `took ${took} ms`);
    assert.equal(server.asked.length, 2); // the calls waited for that search, and started none
    workers.close();
    server.hangUp();
  });

  it("rejects every call at once after close(), saying the client is closed", async () => {
    const server = new ScriptedServer([10, 11]);
    const workers = pool(server);
    await workers.start();
    workers.close();
    const opened = server.opened;
    const closed = (e: TmsError): boolean => e.code === status.FAILED_PRECONDITION && /this client is closed/.test(e.details);
    const started = performance.now();
    await assert.rejects(callPid(workers), closed);
    await assert.rejects(workers.stream({ path: "/tms.v1.ModelService/RunImageStream", model: "", timeoutMs: null }), closed);
    await assert.rejects(workers.start(), closed);
    assert.ok(performance.now() - started < 50, `took ${performance.now() - started} ms`);
    assert.equal(server.opened, opened); // no search
    const never = pool(server); // closed before it started
    never.close();
    await assert.rejects(callPid(never), closed);
    assert.equal(server.opened, opened);
  });

  it("ends the calls in flight at close(), at once, saying the client is closed", async () => {
    const server = new ScriptedServer([10]);
    const workers = pool(server);
    await workers.start();
    server.stalled.add(10); // holds its calls until their deadline (a second)
    const calls = [callPid(workers), callPid(workers)];
    for (let i = 0; i < 100 && server.stalling < 2; i++) await new Promise((r) => setTimeout(r, 5));
    const started = performance.now();
    workers.close();
    for (const call of calls) {
      await assert.rejects(call, (e: TmsError) => e.code === status.FAILED_PRECONDITION && /this client is closed/.test(e.details));
    }
    assert.ok(performance.now() - started < 100, `took ${performance.now() - started} ms`);
    assert.equal(server.stalling, 0); // cancelled, not retried
  });

  it("ends a background search waiting on a stalled worker at close(), at once", async () => {
    const server = new ScriptedServer([10, 11], [0, 1]);
    server.stalled.add(11);
    const workers = pool(server, { connectTimeoutMs: 10_000, answerWaitMs: 20 });
    await workers.start();
    // the background search waits five seconds for the stalled worker's answer
    for (let i = 0; i < 100 && !server.asked.some(({ waitMs }) => waitMs > 4_000); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(server.stalling, 1);
    const underWay = workers.search(); // the search under way, not a new one
    const started = performance.now();
    workers.close();
    await underWay;
    assert.ok(performance.now() - started < 100, `took ${performance.now() - started} ms`);
    assert.equal(server.stalling, 0); // its call was cancelled
  });

  it("rejects a start under way at close(), at once, saying the client is closed", async () => {
    const server = new ScriptedServer([10]);
    server.stalled.add(10);
    const workers = pool(server, { connectTimeoutMs: 10_000, answerWaitMs: 5_000 });
    const start = workers.start();
    await new Promise((r) => setTimeout(r, 20));
    const started = performance.now();
    workers.close();
    await assert.rejects(start, (e: TmsError) => e.code === status.FAILED_PRECONDITION && /this client is closed/.test(e.details));
    assert.ok(performance.now() - started < 100, `took ${performance.now() - started} ms`);
    assert.equal(server.stalling, 0);
  });

  it("sends a model's calls only to the workers that have it", async () => {
    const server = new ScriptedServer([10, 11, 12], [], { 10: ["a"], 11: ["a", "b"], 12: ["a"] });
    const workers = pool(server);
    const pids = new Set<number>();
    for (let i = 0; i < 6; i++) pids.add(await callPid(workers, "b"));
    assert.deepEqual(pids, new Set([11]));
    workers.close();
  });

  it("follows a model a reload loads on more workers, asking the server's workers at once", async () => {
    const server = new ScriptedServer([10, 11], [], { 10: ["a", "b"], 11: ["b"] });
    const workers = pool(server, { refreshIntervalMs: 60_000 }); // no background round meanwhile
    await workers.start();
    for (let i = 0; i < 4; i++) assert.equal(await callPid(workers, "a"), 10);
    server.models[11] = ["a", "b"];
    server.reloads[10] = 1;
    server.reloads[11] = 1;
    const pids = new Set<number>();
    for (let i = 0; i < 100 && !pids.has(11); i++) {
      pids.add(await callPid(workers, "a")); // 10's answers say it has done reload 1
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.deepEqual(pids, new Set([10, 11]));
    assert.deepEqual(workers.workerInfos().map((w) => w.models), [["a", "b"], ["a", "b"]]);
    const asked = server.asked.length;
    for (let i = 0; i < 4; i++) await callPid(workers, "a");
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.asked.length, asked); // asked once: both had done the reload
    workers.close();
  });

  it("leaves a worker a reload takes a model off at its first answer saying so", async () => {
    const server = new ScriptedServer([10, 11], [], { 10: ["a"], 11: ["a"] });
    const workers = pool(server, { refreshIntervalMs: 60_000, retry: RetryPolicy.never() });
    await workers.start();
    assert.deepEqual(new Set(await Promise.all([1, 2].map(() => callPid(workers, "a")))), new Set([10, 11]));
    server.models[11] = ["b"]; // 11 has reloaded, and no longer has "a"; 10 has not yet
    server.reloads[11] = 1;
    server.failing.set(11, new TmsError(status.FAILED_PRECONDITION, "model a is not loaded"));
    const failures = (await Promise.allSettled([1, 2].map(() => callPid(workers, "a")))).filter((r) => r.status === "rejected");
    assert.equal(failures.length, 1);
    for (let i = 0; i < 100 && workers.workerInfos()[1]!.models[0] !== "b"; i++) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(await Promise.all([1, 2, 3, 4].map(() => callPid(workers, "a"))), [10, 10, 10, 10]);
    workers.close();
  });

  it("retries a status with RetryInfo on another worker after its delay, and no other", async () => {
    const server = new ScriptedServer([10, 11]);
    const workers = pool(server, { retry: RetryPolicy.default().withBackoff(500, 500) });
    await workers.start();
    const trailers = detailsTrailers(status.RESOURCE_EXHAUSTED, { reason: "QUEUE_FULL", retryDelayMs: 30 });
    server.failing.set(10, new TmsError(status.RESOURCE_EXHAUSTED, "queue full", trailers));
    for (let i = 0; i < 4; i++) {
      const started = performance.now();
      assert.equal(await callPid(workers), 11);
      assert.ok(performance.now() - started < 400); // the server's delay, not the backoff
    }
    assert.equal(workers.workerInfos().length, 2); // a full queue does not drop the worker
    server.failing.set(10, new TmsError(status.RESOURCE_EXHAUSTED, "message too large"));
    server.failing.set(11, new TmsError(status.RESOURCE_EXHAUSTED, "message too large"));
    const calls = server.paths.length;
    await assert.rejects(callPid(workers), (e: TmsError) => e.code === status.RESOURCE_EXHAUSTED && e.reason === "");
    assert.equal(server.paths.length, calls + 1);
    workers.close();
  });

  it("rejects a refused token at once, with no retry", async () => {
    const server = new ScriptedServer([10, 11]);
    server.refuse = true;
    const workers = pool(server);
    await assert.rejects(workers.start(), (e: TmsError) => e.code === status.UNAUTHENTICATED);
    assert.equal(server.opened, 1);
    workers.close();
  });

  it("fails the start at once when nothing listens, saying the connection was refused", async () => {
    const server = new ScriptedServer([10]);
    server.down = true;
    const workers = pool(server, { targets: ["h:1", "h:2"], connectTimeoutMs: 10_000 });
    const started = performance.now();
    await assert.rejects(workers.start(), (e: ConnectError) => {
      assert.equal(e.name, "ConnectError");
      assert.equal(e.code, status.UNAVAILABLE);
      assert.equal(e.details, "connection refused at h:1, h:2: is tms-server running?");
      assert.deepEqual(e.refused, ["h:1", "h:2"]);
      return true;
    });
    assert.ok(performance.now() - started < 100, `took ${performance.now() - started} ms`);
    assert.equal(server.opened, 0);
    workers.close();
  });

  it("waits for a server that refuses connections with waitForServer", async () => {
    const server = new ScriptedServer([10]);
    server.down = true;
    const workers = pool(server, { waitForServer: true });
    await workers.start(); // the scripted server answers calls all the same
    assert.equal(server.probed, 0);
    assert.deepEqual(workers.workerInfos().map((w) => w.pid), [10]);
    workers.close();
  });

  it("fails with a ConnectError when nothing answers", async () => {
    const server = new ScriptedServer([10]);
    server.dead.add(10);
    const workers = pool(server);
    await assert.rejects(workers.start(), { name: "ConnectError" });
    workers.close();
  });
});
