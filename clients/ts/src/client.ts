/** ModelClient: call one model of TMS servers, spread over all their worker processes. */
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { Metadata, status } from "@grpc/grpc-js";

import { type Balancer, LeastLoaded } from "./balancers.js";
import { TmsError } from "./errors.js";
import { Encoding } from "./gen/tms/v1/image.js";
import {
  GetModelInfoRequest,
  GetModelInfoResponse,
  ListModelsResponse,
  type ModelInfo,
  RunImageBatchRequest,
  RunImageBatchResponse,
  RunImageRequest,
  RunImageResponse,
  RunImageToImageRequest,
  RunImageToImageResponse,
  RunTextBatchRequest,
  RunTextBatchResponse,
  RunTextRequest,
  RunTextResponse,
} from "./gen/tms/v1/model_service.js";
import { fromMessage, type Image, type ImageInput, toMessage } from "./images.js";
import { type PoolCall, WorkerPool } from "./pool.js";
import { LONGEST_TIMEOUT_MS, RetryPolicy } from "./retry.js";
import { exchange, type FrameErrors, type FrameResult, FrameStream } from "./stream.js";
import { parseTargets } from "./targets.js";
import type { TlsOptions } from "./transport.js";
import type { WorkerInfo } from "./workers.js";

/** Options of a ModelClient; every field has a default. Times are in milliseconds. */
export interface ClientOptions {
  /** How long start() (or the first call) waits for the servers, then ConnectError (10 000).
   * An address where nothing listens (the connection is refused) fails the start at once. */
  connectTimeoutMs?: number;
  /** Wait up to connectTimeoutMs for a server that refuses connections (one still starting or
   * restarting) instead of failing at once (false). */
  waitForServer?: boolean;
  /** Each call's deadline, retries included (60 000; null, Infinity or 1e11, over three years,
   * or more: none). */
  timeoutMs?: number | null;
  /** Which worker gets a call (new LeastLoaded(); or new RoundRobin()). */
  balancer?: Balancer;
  /** Which failures are tried again, on another worker (RetryPolicy.never() turns retries off). */
  retry?: RetryPolicy;
  /** The largest request or reply, in bytes (64 MiB). */
  maxMessageBytes?: number;
  /** Connections to open at an address to find its workers (eight per worker, plus eight, at
   * the start; four and four in a background search). */
  discoveryAttempts?: number;
  /** Between background searches for missing workers (2 000). */
  refreshIntervalMs?: number;
  /** Connect over TLS: true for the system's root certificates, or TlsOptions. */
  tls?: boolean | TlsOptions;
  /** Sent as `authorization: Bearer <token>` with every call, worker discovery included. */
  token?: string;
}

/** Options of one call. */
export interface CallOptions {
  /** Aborts the call (and its retries); it then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** This call's deadline, retries included; overrides the client's timeoutMs (null, Infinity or
   * 1e11 or more: none; NaN is a RangeError). */
  timeoutMs?: number | null;
  /** Extra request metadata. */
  metadata?: Record<string, string>;
}

/** Options of runImageStream. */
export interface StreamOptions extends CallOptions {
  /** The whole stream's deadline (default: none, as is Infinity or 1e11 or more; the client's
   * timeoutMs does not apply). */
  timeoutMs?: number | null;
  /** Frames sent and not yet answered, at most (4). */
  window?: number;
  /** "raise" (the default): a failed frame throws its error and ends the stream; "yield": its
   * FrameResult carries the error and the stream goes on. */
  errors?: FrameErrors;
}

/** A model's arguments: a JSON object. */
export type Args = Record<string, unknown>;

/** What runImageToImage returns. */
export interface ImageToImageResult {
  /** The output images (raw pixels, or PNG files with `png: true`); see `pixels(image)`. */
  images: Image[];
  /** The model's structured result beside the images (null when it has none). */
  result: unknown;
}

/** The standard gRPC health status. */
export type HealthStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";
const HEALTH: HealthStatus[] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];
const SERVICE = "/tms.v1.ModelService/";

function argsJson(args: Args | undefined): string {
  return args === undefined ? "" : JSON.stringify(args);
}

function parse(text: string): unknown {
  return text === "" ? null : JSON.parse(text);
}

function bearer(token: string | undefined): Metadata {
  const metadata = new Metadata();
  if (token === undefined) return metadata;
  if (!/^[\x21-\x7e]+$/.test(token)) throw new TypeError("a token is printable ASCII without spaces");
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

/**
 * A client for one model of a TMS server (or of several servers serving the same models).
 *
 * `target` is "host:port", a list of them, or "dns:///name:port" for every address the name
 * resolves to. `await client.start()` waits up to connectTimeoutMs for the servers (rejecting
 * with ConnectError, at once when every address refuses the connection, or with a TmsError
 * UNAUTHENTICATED when the token is refused) and finds every worker process behind them; the
 * first call does it if start() was not called. Calls reject with TmsError. Call close() when
 * done.
 */
export class ModelClient {
  readonly targets: string[];
  /** Each call's deadline in milliseconds (null: none); may be changed between calls. */
  timeoutMs: number | null;
  private readonly pool: WorkerPool;

  constructor(
    readonly model: string,
    target: string | readonly string[],
    options: ClientOptions = {},
  ) {
    this.targets = parseTargets(target);
    this.timeoutMs = options.timeoutMs === undefined ? 60_000 : options.timeoutMs;
    const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const refreshIntervalMs = options.refreshIntervalMs ?? 2_000;
    if (!(connectTimeoutMs > 0) || !(refreshIntervalMs > 0) || (this.timeoutMs !== null && !(this.timeoutMs > 0))) {
      throw new RangeError("timeouts and the refresh interval must be positive");
    }
    if (!(connectTimeoutMs < LONGEST_TIMEOUT_MS)) {
      throw new RangeError(`connectTimeoutMs must be below ${LONGEST_TIMEOUT_MS} (about three years)`);
    }
    this.pool = new WorkerPool({
      targets: this.targets,
      connectTimeoutMs,
      balancer: options.balancer ?? new LeastLoaded(),
      retry: options.retry ?? RetryPolicy.default(),
      discoveryAttempts: options.discoveryAttempts,
      refreshIntervalMs,
      tls: options.tls,
      maxMessageBytes: options.maxMessageBytes ?? 64 * 1024 * 1024,
      metadata: bearer(options.token),
      waitForServer: options.waitForServer ?? false,
    });
  }

  toString(): string {
    return `ModelClient(${JSON.stringify(this.model)}, ${this.pool})`;
  }

  /** Connect: find every worker process behind the targets. */
  start(): Promise<void> {
    return this.pool.start();
  }

  /** Close every connection and stop looking for workers, ending a search under way at once
   * (and a start() under way with it). The calls and streams in flight end at once, and calls,
   * streams and start() made after it reject at once, not retried: all with a TmsError
   * FAILED_PRECONDITION, "this client is closed; make a new one to call again". */
  close(): void {
    this.pool.close();
  }

  /** The worker processes this client is connected to, with their load. */
  workers(): WorkerInfo[] {
    return this.pool.workerInfos();
  }

  /** Runs the model on one image; its result, parsed from JSON. */
  async runImage(image: ImageInput, args?: Args, options?: CallOptions): Promise<unknown> {
    const request = RunImageRequest.encode(
      RunImageRequest.fromPartial({ model: this.model, image: toMessage(image), argsJson: argsJson(args) }),
    );
    const reply = await this.send("RunImage", request.finish(), this.model, options);
    return parse(RunImageResponse.decode(reply).resultJson);
  }

  /** Runs the model on several images in one call; one result per image. */
  async runImages(images: readonly ImageInput[], args?: Args, options?: CallOptions): Promise<unknown[]> {
    const request = RunImageBatchRequest.encode(
      RunImageBatchRequest.fromPartial({ model: this.model, images: images.map(toMessage), argsJson: argsJson(args) }),
    );
    const reply = await this.send("RunImageBatch", request.finish(), this.model, options);
    return RunImageBatchResponse.decode(reply).resultsJson.map(parse);
  }

  /** Runs an image-to-image model on one image (or several, e.g. two video frames); the output
   * images as raw pixels (PNG files with `png: true`) and the model's result. */
  async runImageToImage(
    images: ImageInput | readonly ImageInput[],
    args?: Args,
    options: CallOptions & { png?: boolean } = {},
  ): Promise<ImageToImageResult> {
    const list: readonly ImageInput[] = Array.isArray(images) ? images : [images as ImageInput];
    const request = RunImageToImageRequest.encode(
      RunImageToImageRequest.fromPartial({
        model: this.model,
        images: list.map(toMessage),
        argsJson: argsJson(args),
        outputEncoding: options.png ? Encoding.ENCODING_PNG : Encoding.ENCODING_RAW,
      }),
    );
    const reply = await this.send("RunImageToImage", request.finish(), this.model, options);
    const response = RunImageToImageResponse.decode(reply);
    return { images: response.images.map(fromMessage), result: parse(response.resultJson) };
  }

  /**
   * Runs the model on a stream of frames (a video) over one RunImageStream call, and yields a
   * FrameResult for each, in order, as the answers come (`for await (const answer of ...)`).
   *
   * The whole stream goes to one worker, whose model may keep state across its frames; `args`
   * are the stream's. At most `window` frames are in flight: the next frame is taken from
   * `frames` only when there is room. A frame that fails throws its TmsError and ends the
   * stream, unless `errors: "yield"`: then its FrameResult carries the error and the stream goes
   * on. An error of the stream itself (no such model, bad args) is thrown. The stream is not
   * retried. Stop iterating (break) to end it early: the call is cancelled. When `frames` throws
   * (or yields what is no image), the frames sent are answered, then that error is thrown.
   */
  runImageStream(
    frames: Iterable<ImageInput> | AsyncIterable<ImageInput>,
    args?: Args,
    options: StreamOptions = {},
  ): AsyncGenerator<FrameResult, void, undefined> {
    const state = new FrameStream(this.model, argsJson(args), options.window ?? 4, options.errors ?? "raise");
    const timeoutMs = options.timeoutMs ?? null;
    if (timeoutMs !== null && !(timeoutMs > 0)) throw new RangeError("timeoutMs must be positive (or null: none)");
    return this.streamFrames(state, frames, { ...this.callOf(options), timeoutMs });
  }

  private async *streamFrames(
    state: FrameStream,
    frames: Iterable<ImageInput> | AsyncIterable<ImageInput>,
    call: Pick<PoolCall, "timeoutMs" | "signal" | "metadata">,
  ): AsyncGenerator<FrameResult, void, undefined> {
    const source = (async function* () {
      yield* frames;
    })();
    try {
      const first = await source.next();
      if (first.done) return; // no frames, no call
      call.signal?.throwIfAborted();
      const stream = await this.pool.stream({ ...call, path: SERVICE + "RunImageStream", model: this.model });
      yield* exchange(stream, state, first.value, source, call.signal);
    } finally {
      source.return().catch(() => undefined); // the caller's generator closes (after a read in progress)
    }
  }

  /** Runs a text model on one text; its result, parsed from JSON. */
  async runText(text: string, args?: Args, options?: CallOptions): Promise<unknown> {
    const request = RunTextRequest.encode(
      RunTextRequest.fromPartial({ model: this.model, text, argsJson: argsJson(args) }),
    );
    const reply = await this.send("RunText", request.finish(), this.model, options);
    return parse(RunTextResponse.decode(reply).resultJson);
  }

  /** Runs a text model on several texts in one call; one result per text. */
  async runTexts(texts: readonly string[], args?: Args, options?: CallOptions): Promise<unknown[]> {
    const request = RunTextBatchRequest.encode(
      RunTextBatchRequest.fromPartial({ model: this.model, texts: [...texts], argsJson: argsJson(args) }),
    );
    const reply = await this.send("RunTextBatch", request.finish(), this.model, options);
    return RunTextBatchResponse.decode(reply).resultsJson.map(parse);
  }

  /** What the server says about this model. */
  async info(options?: CallOptions): Promise<ModelInfo> {
    const request = GetModelInfoRequest.encode(GetModelInfoRequest.fromPartial({ model: this.model }));
    const reply = await this.send("GetModelInfo", request.finish(), this.model, options);
    const { info } = GetModelInfoResponse.decode(reply);
    if (info === undefined) throw new TmsError(status.INTERNAL, "GetModelInfo returned no info");
    return info;
  }

  /** Every model the server has loaded, sorted by name. */
  async listModels(options?: CallOptions): Promise<ModelInfo[]> {
    return (await this.listing(options)).models;
  }

  /** The models the server found but failed to load, by name, and why (the exception's type
   * and message; empty when all loaded). Their calls fail FAILED_PRECONDITION, reason
   * MODEL_NOT_LOADED. */
  async failedModels(options?: CallOptions): Promise<Record<string, string>> {
    const failed = (await this.listing(options)).failed;
    return Object.fromEntries(failed.map((model) => [model.name, model.reason]));
  }

  private async listing(options?: CallOptions): Promise<ListModelsResponse> {
    return ListModelsResponse.decode(await this.send("ListModels", new Uint8Array(0), "", options));
  }

  /** The standard gRPC health status of this model (or of `service`; "" for the whole
   * server) on one worker. */
  async health(service: string = this.model, options?: CallOptions): Promise<HealthStatus> {
    // HealthCheckRequest {string service = 1}; HealthCheckResponse {enum status = 1}.
    const request = new BinaryWriter();
    if (service) request.uint32(10).string(service);
    let reply: Buffer;
    try {
      const data = Buffer.from(request.finish());
      const call = { ...this.callOf(options), path: "/grpc.health.v1.Health/Check", data, model: service };
      reply = (await this.pool.call(call)).data;
    } catch (error) {
      if (error instanceof TmsError && error.code === status.NOT_FOUND) return "SERVICE_UNKNOWN";
      throw error;
    }
    const reader = new BinaryReader(reply);
    let value = 0;
    while (reader.pos < reader.len) {
      const [field, wireType] = reader.tag();
      if (field === 1 && wireType === 0) value = reader.int32();
      else reader.skip(wireType);
    }
    return HEALTH[value] ?? "UNKNOWN";
  }

  private callOf(options: CallOptions | undefined): Pick<PoolCall, "timeoutMs" | "signal" | "metadata"> {
    let metadata: Metadata | undefined;
    if (options?.metadata !== undefined) {
      metadata = new Metadata();
      for (const [key, value] of Object.entries(options.metadata)) metadata.set(key, value);
    }
    const timeoutMs = options?.timeoutMs === undefined ? this.timeoutMs : options.timeoutMs;
    if (Number.isNaN(timeoutMs)) throw new RangeError("timeoutMs must be a number of milliseconds (or null: none), not NaN");
    return { timeoutMs, signal: options?.signal, metadata };
  }

  private async send(method: string, request: Uint8Array, model: string, options?: CallOptions): Promise<Buffer> {
    const data = Buffer.from(request.buffer, request.byteOffset, request.byteLength);
    const reply = await this.pool.call({ ...this.callOf(options), path: SERVICE + method, data, model });
    return reply.data;
  }
}
