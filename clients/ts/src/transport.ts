/**
 * The transport: one grpc-js connection to one worker process, and raw bytes over it.
 *
 * Every Channel is its own grpc-js Client with a private subchannel pool
 * (`grpc.use_local_subchannel_pool`), so it opens its own TCP connection, which the kernel
 * hands to one of the server's worker processes (SO_REUSEPORT). grpc-js's own retries are off:
 * a channel belongs to one worker, and the pool retries on another.
 */
import { readFileSync } from "node:fs";

import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  Client,
  type ClientDuplexStream,
  credentials,
  Metadata,
  type ServiceError,
  status,
  type StatusObject,
} from "@grpc/grpc-js";

import { TmsError } from "./errors.js";
import { refused } from "./targets.js";

/** TLS settings: each of `ca`, `cert` and `key` is PEM bytes or a path to a PEM file (read
 * once, when the client is made). No `ca`: the system's root certificates. */
export interface TlsOptions {
  ca?: Uint8Array | string;
  /** Client certificate and key, for mutual TLS: both or neither. */
  cert?: Uint8Array | string;
  key?: Uint8Array | string;
  /** The name to verify the server's certificate against, instead of the host's. */
  serverName?: string;
}

/** One call's bytes and settings. */
export interface Request {
  /** Method path, "/tms.v1.ModelService/RunImage". */
  path: string;
  data: Buffer;
  /** Date.now() time by which the call must end (Infinity: none). */
  deadline: number;
  metadata: Metadata;
  /** Wait for the connection to be ready instead of failing at once when it is not. */
  waitForReady?: boolean;
  signal?: AbortSignal;
}

/** What a call returned: the reply's bytes and the trailing metadata. */
export interface Reply {
  data: Buffer;
  trailers: Metadata;
}

function pem(source: Uint8Array | string | undefined, what: string): Buffer | null {
  if (source === undefined) return null;
  if (typeof source !== "string") return Buffer.from(source);
  try {
    return readFileSync(source);
  } catch (error) {
    throw new TypeError(`cannot read the TLS ${what} ${source}: ${(error as Error).message}`);
  }
}

/** What a streaming call needs: a unary request's settings without its bytes. */
export type StreamRequest = Pick<Request, "path" | "deadline" | "metadata">;

/** One bidirectional streaming call: messages written as the caller likes, replies read. */
export interface Stream {
  /** Send one message (buffered; the caller bounds how many it sends ahead). */
  write(data: Buffer): void;
  /** Send no more messages (half-close). */
  end(): void;
  /** Cancel the call; replies not yet read then fail CANCELLED. Harmless once it ended. */
  cancel(): void;
  /** The replies, in order, then the trailers as the iterator's return value; rejects with a
   * TmsError (carrying the trailers) when the call fails. */
  readonly replies: AsyncIterator<Buffer, Metadata>;
}

/** One connection to one worker: what the pool needs of a channel. */
export interface Connection {
  unary(request: Request): Promise<Reply>;
  stream(request: StreamRequest): Stream;
  close(): void;
}

/** Opens connections; the pool's one way to reach a server (tests pass a scripted one). */
export interface Connector {
  open(address: string): Connection;
  /** Whether `address` refuses connections (nothing listens there), as far as can be told
   * within `timeoutMs` (see targets.refused); a connector without it never says so. */
  refuses?(address: string, timeoutMs: number, signal?: AbortSignal): Promise<boolean>;
}

/** Opens grpc-js channels: credentials and channel options shared by every connection. */
export class Transport implements Connector {
  private readonly credentials: ChannelCredentials;
  private readonly options: ChannelOptions;

  constructor(tls: TlsOptions | boolean | undefined, maxMessageBytes: number) {
    this.options = {
      "grpc.use_local_subchannel_pool": 1,
      "grpc.enable_retries": 0,
      "grpc.max_receive_message_length": maxMessageBytes,
      "grpc.max_send_message_length": maxMessageBytes,
    };
    if (tls === undefined || tls === false) {
      this.credentials = credentials.createInsecure();
      return;
    }
    const settings = tls === true ? {} : tls;
    if ((settings.cert === undefined) !== (settings.key === undefined)) {
      throw new TypeError("TLS: cert and key go together (mutual TLS needs both)");
    }
    this.credentials = credentials.createSsl(
      pem(settings.ca, "CA bundle"),
      pem(settings.key, "key"),
      pem(settings.cert, "certificate"),
    );
    if (settings.serverName !== undefined) {
      this.options["grpc.ssl_target_name_override"] = settings.serverName;
      this.options["grpc.default_authority"] = settings.serverName;
    }
  }

  open(address: string): Channel {
    return new Channel(new Client(address, this.credentials, this.options));
  }

  refuses(address: string, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    return refused(address, timeoutMs, signal);
  }
}

const identity = (buffer: Buffer): Buffer => buffer;

/** One grpc-js connection to one worker. */
export class Channel implements Connection {
  constructor(private readonly client: Client) {}

  /** Send one unary call; rejects with TmsError (carrying the trailers) when it fails. */
  unary(request: Request): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const metadata = request.metadata.clone();
      if (request.waitForReady) metadata.setOptions({ waitForReady: true });
      const options: Partial<CallOptions> = Number.isFinite(request.deadline) ? { deadline: request.deadline } : {};
      let error: ServiceError | null = null;
      let response: Buffer | undefined;
      const call = this.client.makeUnaryRequest(
        request.path,
        identity,
        identity,
        request.data,
        metadata,
        options,
        (e: ServiceError | null, r?: Buffer) => {
          error = e;
          response = r;
        },
      );
      const abort = (): void => call.cancel();
      if (request.signal?.aborted) abort();
      else request.signal?.addEventListener("abort", abort, { once: true });
      // grpc-js calls the callback, then emits the status, which carries the trailers.
      call.on("status", (status: StatusObject) => {
        request.signal?.removeEventListener("abort", abort);
        if (error !== null || response === undefined) {
          reject(error === null ? new TmsError(status.code, status.details, status.metadata) : TmsError.from(error));
        } else {
          resolve({ data: response, trailers: status.metadata });
        }
      });
    });
  }

  /** Open a bidirectional streaming call. */
  stream(request: StreamRequest): Stream {
    const options: Partial<CallOptions> = Number.isFinite(request.deadline) ? { deadline: request.deadline } : {};
    const call = this.client.makeBidiStreamRequest(request.path, identity, identity, request.metadata.clone(), options);
    return {
      write: (data) => call.write(data),
      end: () => call.end(),
      cancel: () => call.cancel(),
      replies: replies(call),
    };
  }

  close(): void {
    this.client.close();
  }
}

/** The replies of a grpc-js streaming call, then its trailers. Listens at once, so that no
 * status is missed before the first read; ends once both the status and the last reply came
 * (grpc-js may emit the status before the replies it still holds). */
function replies(call: ClientDuplexStream<Buffer, Buffer>): AsyncGenerator<Buffer, Metadata> {
  const queue: Buffer[] = [];
  let ended: StatusObject | undefined;
  let drained = false;
  let wake = (): void => undefined;
  call.on("data", (data: Buffer) => {
    queue.push(data);
    wake();
  });
  call.on("end", () => {
    drained = true;
    wake();
  });
  call.on("error", () => undefined); // the status says it
  call.on("status", (end: StatusObject) => {
    ended = end;
    wake();
  });
  return (async function* () {
    for (;;) {
      const data = queue.shift();
      if (data !== undefined) yield data;
      else if (ended === undefined || !drained) await new Promise<void>((resolve) => (wake = resolve));
      else if (ended.code === status.OK) return ended.metadata;
      else throw new TmsError(ended.code, ended.details, ended.metadata);
    }
  })();
}
