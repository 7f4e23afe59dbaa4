/** runImageStream over scripted workers: no sockets, every frame and answer visible. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Metadata, status } from "@grpc/grpc-js";

import { ModelClient } from "../src/client.js";
import { DETAILS_KEY, TmsError } from "../src/errors.js";
import { GetWorkerInfoResponse, RunImageStreamRequest, RunImageStreamResponse } from "../src/gen/tms/v1/model_service.js";
import { type ImageInput, rawImage } from "../src/images.js";
import { WorkerPool } from "../src/pool.js";
import type { Connection, Connector, Stream, StreamRequest } from "../src/transport.js";
import { detailsTrailers } from "./details.js";

/** What a scripted worker does with each frame it reads (and, `request` undefined, with the end
 * of the frames). */
type Serve = (stream: ScriptedStream, request: RunImageStreamRequest | undefined) => void;

/** One RunImageStream call as a scripted worker sees it. */
class ScriptedStream implements Stream {
  readonly requests: RunImageStreamRequest[] = [];
  halfClosed = false;
  cancelled = false;
  readonly replies: AsyncGenerator<Buffer, Metadata>;
  private readonly queue: (Buffer | TmsError | Metadata)[] = [];
  private wake = (): void => undefined;

  constructor(
    readonly request: StreamRequest,
    readonly pid: number,
    private readonly serve: Serve,
  ) {
    this.replies = this.read();
  }

  write(data: Buffer): void {
    const request = RunImageStreamRequest.decode(data);
    this.requests.push(request);
    this.serve(this, request);
  }

  end(): void {
    this.halfClosed = true;
    this.serve(this, undefined);
  }

  cancel(): void {
    this.cancelled = true;
    this.push(new TmsError(status.CANCELLED, "Cancelled on client"));
  }

  /** Answer a frame with its result, or with `error` (a google.rpc.Status's bytes). */
  answer(frameId: number, result: unknown, error?: Uint8Array): void {
    const response = { frameId, resultJson: error ? "" : JSON.stringify(result), errorStatus: Buffer.from(error ?? []) };
    this.push(Buffer.from(RunImageStreamResponse.encode(RunImageStreamResponse.fromPartial(response)).finish()));
  }

  /** End the call: OK (with this worker's identity in the trailers) or with `error`. */
  finish(error?: TmsError): void {
    const trailers = new Metadata();
    trailers.set("tms-worker", `id/${this.pid}`);
    this.push(error ?? trailers);
  }

  private push(item: Buffer | TmsError | Metadata): void {
    this.queue.push(item);
    this.wake();
  }

  private async *read(): AsyncGenerator<Buffer, Metadata> {
    for (;;) {
      const item = this.queue.shift();
      if (item === undefined) await new Promise<void>((resolve) => (this.wake = resolve));
      else if (item instanceof TmsError) throw item;
      else if (item instanceof Metadata) return item;
      else yield item;
    }
  }
}

/** Workers (one per pid) whose streams `serve` answers; `streams` are every call opened. A
 * worker in `gone` answers no discovery. */
class StreamServer implements Connector {
  readonly streams: ScriptedStream[] = [];
  readonly gone = new Set<number>();
  private opened = 0;

  constructor(
    private readonly serve: Serve,
    readonly pids = [10],
  ) {}

  open(): Connection {
    const index = this.opened++ % this.pids.length;
    const pid = this.pids[index];
    const info = GetWorkerInfoResponse.fromPartial({ instanceId: "id", pid, workerIndex: index, workerCount: this.pids.length });
    return {
      unary: async () => {
        if (this.gone.has(pid)) throw new TmsError(status.UNAVAILABLE, "gone");
        return { data: Buffer.from(GetWorkerInfoResponse.encode(info).finish()), trailers: new Metadata() };
      },
      stream: (request) => {
        const stream = new ScriptedStream(request, pid, this.serve);
        this.streams.push(stream);
        return stream;
      },
      close: () => undefined,
    };
  }
}

/** Answers each frame at once with its id and the stream's args; ends when the frames do. */
const echo: Serve = (stream, request) => {
  if (request === undefined) stream.finish();
  else stream.answer(request.frameId, { frame: request.frameId, args: stream.requests[0].argsJson });
};

/** A ModelClient for "tracker" whose pool reaches `server`. */
function clientOf(server: Connector, token?: string): ModelClient {
  const client = new ModelClient("tracker", "h:1", { token });
  const internals = client as unknown as { pool: WorkerPool };
  internals.pool = new WorkerPool({ ...internals.pool.settings, connector: server });
  return client;
}

const frame = (i: number): ImageInput => rawImage(new Uint8Array([i, 0, 0, 0]), [2, 2]);
const tick = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 10));
const inFlight = (client: ModelClient): number[] => client.workers().map((w) => w.inFlight);

/** A status's bytes as a frame's error carries them: INVALID_ARGUMENT, IMAGE_TOO_LARGE, "image". */
function tooLarge(): Uint8Array {
  const trailers = detailsTrailers(status.INVALID_ARGUMENT, { reason: "IMAGE_TOO_LARGE", fields: ["image"] });
  return trailers.get(DETAILS_KEY)[0] as Buffer;
}

describe("image streams", () => {
  it("answer each frame in order; the first request names the model and carries the args", async () => {
    const server = new StreamServer(echo);
    const client = clientOf(server, "secret");
    const answers = [];
    for await (const answer of client.runImageStream([0, 1, 2].map(frame), { label: "v" })) answers.push(answer);
    assert.deepEqual(answers.map((a) => [a.frameId, a.result, a.error]), [0, 1, 2].map((i) => [i, { frame: i, args: '{"label":"v"}' }, undefined]));
    const [stream] = server.streams;
    assert.deepEqual(stream.requests.map((r) => [r.model, r.argsJson, r.frameId, r.image?.data[0]]), [
      ["tracker", '{"label":"v"}', 0, 0],
      ["", "", 1, 1],
      ["", "", 2, 2],
    ]);
    assert.equal(stream.request.path, "/tms.v1.ModelService/RunImageStream");
    assert.deepEqual(stream.request.metadata.get("authorization"), ["Bearer secret"]);
    assert.equal(stream.request.deadline, Infinity); // the client's timeoutMs does not apply
    assert.equal(stream.halfClosed, true);
    assert.deepEqual(inFlight(client), [0]);
    for await (const _ of client.runImageStream([])) assert.fail("no frames, no answers");
    assert.equal(server.streams.length, 1); // and no call
    assert.throws(() => client.runImageStream([], undefined, { window: 0 }), RangeError);
    client.close();
  });

  it("yield a failed frame's error with errors 'yield', and throw it by default", async () => {
    const serve: Serve = (stream, request) => {
      if (request === undefined) stream.finish();
      else if (request.frameId === 1) stream.answer(1, undefined, tooLarge());
      else stream.answer(request.frameId, request.frameId);
    };
    const server = new StreamServer(serve);
    const client = clientOf(server);
    const answers = [];
    for await (const answer of client.runImageStream([0, 1, 2].map(frame), undefined, { errors: "yield" })) answers.push(answer);
    assert.deepEqual(answers.map((a) => [a.frameId, a.result]), [[0, 0], [1, undefined], [2, 2]]);
    const { error } = answers[1];
    assert.ok(error instanceof TmsError);
    assert.deepEqual([error.code, error.reason, error.fieldViolations.map((v) => v.field)], [status.INVALID_ARGUMENT, "IMAGE_TOO_LARGE", ["image"]]);
    const results: unknown[] = [];
    const raising = async (): Promise<void> => {
      for await (const answer of client.runImageStream([0, 1, 2].map(frame))) results.push(answer.result);
    };
    await assert.rejects(raising(), (e: TmsError) => e.code === status.INVALID_ARGUMENT && e.reason === "IMAGE_TOO_LARGE");
    assert.deepEqual(results, [0]);
    assert.equal(server.streams[1].cancelled, true);
    assert.deepEqual(inFlight(client), [0]);
    client.close();
  });

  it("take the next frame only when fewer than `window` are unanswered", async () => {
    const server = new StreamServer(() => undefined); // answers only when told
    const client = clientOf(server);
    let taken = 0;
    function* frames(): Generator<ImageInput> {
      for (let i = 0; i < 10; i++) {
        taken += 1;
        yield frame(i);
      }
    }
    const answers = client.runImageStream(frames(), undefined, { window: 3 });
    const first = answers.next();
    await tick();
    const [stream] = server.streams;
    assert.deepEqual([taken, stream.requests.length], [3, 3]);
    assert.deepEqual(inFlight(client), [1]); // the stream is one call in flight
    stream.answer(0, "a");
    assert.equal((await first).value?.frameId, 0);
    await tick();
    assert.deepEqual([taken, stream.requests.length], [4, 4]);
    stream.answer(1, "b");
    stream.answer(2, "c");
    await answers.next();
    await answers.next();
    await tick();
    assert.deepEqual([taken, stream.requests.length], [6, 6]);
    await answers.return();
    assert.deepEqual([stream.cancelled, inFlight(client)], [true, [0]]);
    client.close();
  });

  it("answer the frames sent when the frames throw (or are no image), then throw that error", async () => {
    const server = new StreamServer(() => undefined); // answers only when told
    const client = clientOf(server);
    const unplugged = new Error("camera unplugged");
    function* camera(): Generator<ImageInput> {
      for (let i = 0; i < 3; i++) yield frame(i);
      throw unplugged;
    }
    const sources: [Iterable<ImageInput>, (e: unknown) => boolean][] = [
      [camera(), (e) => e === unplugged],
      [[0, 1, 2].map(frame).concat({} as ImageInput), (e) => e instanceof TypeError && /cannot send Object as an image/.test(e.message)],
    ];
    for (const [index, [frames, thrown]] of sources.entries()) {
      const results: unknown[] = [];
      const run = async (): Promise<void> => {
        for await (const answer of client.runImageStream(frames)) results.push(answer.result);
      };
      const ended = assert.rejects(run(), thrown);
      await tick();
      const stream = server.streams[index];
      assert.deepEqual([stream.requests.length, stream.halfClosed, stream.cancelled], [3, true, false]);
      for (const i of [0, 1, 2]) stream.answer(i, i);
      stream.finish();
      await ended;
      assert.deepEqual(results, [0, 1, 2]);
    }
    const none = async (): Promise<void> => {
      for await (const _ of client.runImageStream([42 as unknown as ImageInput])) assert.fail("no frame sent");
    };
    await assert.rejects(none(), (e: Error) => e instanceof TypeError && /cannot send number as an image/.test(e.message));
    assert.equal(server.streams[2].cancelled, true);
    assert.deepEqual(inFlight(client), [0]);
    client.close();
  });

  it("fail INTERNAL on an answer to another frame than the one due", async () => {
    const server = new StreamServer((stream, request) => {
      if (request !== undefined) stream.answer(request.frameId + 1, null);
    });
    const client = clientOf(server);
    const run = async (): Promise<void> => {
      for await (const _ of client.runImageStream([0, 1].map(frame))) assert.fail("no answer is right");
    };
    await assert.rejects(run(), (e: TmsError) => e.code === status.INTERNAL && /frame 1 where frame 0 was due/.test(e.message));
    assert.equal(server.streams[0].cancelled, true);
    assert.deepEqual(inFlight(client), [0]);
    client.close();
  });

  it("throw an error of the whole stream; UNAVAILABLE drops the worker, with no retry", async () => {
    let failure = new TmsError(status.NOT_FOUND, "no model", detailsTrailers(status.NOT_FOUND, { reason: "MODEL_NOT_FOUND" }));
    const server = new StreamServer((stream) => {
      if (failure.code === status.UNAVAILABLE) server.gone.add(stream.pid);
      stream.finish(failure);
    }, [10, 11]);
    const client = clientOf(server);
    const run = async (): Promise<void> => {
      for await (const _ of client.runImageStream([frame(0)])) assert.fail("the stream fails");
    };
    await assert.rejects(run(), (e: TmsError) => e.code === status.NOT_FOUND && e.reason === "MODEL_NOT_FOUND");
    assert.equal(client.workers().length, 2);
    failure = new TmsError(status.UNAVAILABLE, "gone");
    await assert.rejects(run(), (e: TmsError) => e.code === status.UNAVAILABLE);
    assert.equal(server.streams.length, 2);
    assert.deepEqual(client.workers().map((w) => w.pid), [10, 11].filter((pid) => pid !== server.streams[1].pid));
    client.close();
  });

  it("cancel the call when the caller stops early, or aborts", async () => {
    const server = new StreamServer(echo);
    const client = clientOf(server);
    let closed = false;
    function* endless(): Generator<ImageInput> {
      try {
        for (let i = 0; ; i++) yield frame(i % 256);
      } finally {
        closed = true;
      }
    }
    for await (const answer of client.runImageStream(endless(), undefined, { window: 2 })) if (answer.frameId === 3) break;
    await tick();
    assert.deepEqual([server.streams[0].cancelled, closed, inFlight(client)], [true, true, [0]]);
    assert.ok(server.streams[0].requests.length <= 6); // 4 answered, at most 2 more in flight
    const controller = new AbortController();
    const reason = new Error("enough");
    const run = async (): Promise<void> => {
      for await (const answer of client.runImageStream(endless(), undefined, { signal: controller.signal })) {
        if (answer.frameId === 2) controller.abort(reason);
      }
    };
    await assert.rejects(run(), (e) => e === reason);
    assert.deepEqual([server.streams[1].cancelled, inFlight(client)], [true, [0]]);
    client.close();
  });
});
