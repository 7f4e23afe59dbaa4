/**
 * A small TypeScript/Node client for TMS (Tiny Model Server), over @grpc/grpc-js.
 *
 * It wraps the generated tms.v1 stubs (./gen, from `codegen/generate.py`) with what most
 * services need: list the models, run an image through a model and read its JSON result, and
 * run an image-to-image model and read the pixels back.
 *
 * ```ts
 * const client = new TmsClient("localhost:50051");
 * const result = await client.runImage("face", encodedImage(await readFile("a.jpg")));
 * client.close();
 * ```
 *
 * Failed calls reject with a TmsError whose `code` is the gRPC status (NOT_FOUND for an unknown
 * model, INVALID_ARGUMENT for a malformed image, ...).
 */
import {
  type CallOptions,
  type ChannelCredentials,
  credentials,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";

import { ColorOrder, DType, Encoding, Image as ImageMessage } from "./gen/tms/v1/image.js";
import {
  type ListModelsResponse,
  type ModelInfo,
  ModelServiceClient,
  type RunImageResponse,
  type RunImageToImageResponse,
} from "./gen/tms/v1/model_service.js";

export { ColorOrder, DType, Encoding, type ModelInfo, ModelServiceClient };
export { status };

/** An image as TMS carries it: raw pixels described by dtype, shape and colour order, or a
 * PNG/JPEG file. */
export interface Image {
  /** The pixels (C order, little-endian) or the encoded file. */
  data: Uint8Array;
  /** (height, width) or (height, width, channels) for raw pixels; empty for files. */
  shape: number[];
  /** Element type of raw pixels. */
  dtype: DType;
  /** What the channels mean; the server converts to the model's colour order. */
  colorOrder: ColorOrder;
  /** Raw pixels or a PNG/JPEG file. */
  encoding: Encoding;
}

/** A PNG or JPEG file, sent as it is; the server decodes it. */
export function encodedImage(file: Uint8Array): Image {
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  let encoding: Encoding;
  if (png.every((byte, i) => file[i] === byte)) {
    encoding = Encoding.ENCODING_PNG;
  } else if (file[0] === 0xff && file[1] === 0xd8) {
    encoding = Encoding.ENCODING_JPEG;
  } else {
    throw new TypeError("bytes are neither a PNG nor a JPEG file");
  }
  return { data: file, shape: [], dtype: DType.D_TYPE_UNSPECIFIED, colorOrder: 0, encoding };
}

/** Raw 8-bit pixels of shape (height, width) or (height, width, channels). */
export function rawImage(data: Uint8Array, shape: number[], colorOrder: ColorOrder): Image {
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) {
    throw new RangeError(`${data.length} bytes do not fill shape [${shape.join(", ")}]`);
  }
  return { data, shape, dtype: DType.D_TYPE_UINT8, colorOrder, encoding: Encoding.ENCODING_RAW };
}

/** What an image-to-image model returns. */
export interface ImageToImageResult {
  /** The images, as raw pixels. */
  images: Image[];
  /** The model's structured result beside the images; null when it has none. */
  result: unknown;
}

/** A failed call: `code` is the gRPC status code, `details` the server's message. */
export class TmsError extends Error {
  readonly code: status;
  readonly details: string;

  constructor(method: string, error: ServiceError) {
    super(`${method}: ${status[error.code]}: ${error.details}`);
    this.name = "TmsError";
    this.code = error.code;
    this.details = error.details;
  }
}

/** Options of a TmsClient. */
export interface TmsClientOptions {
  /** Channel credentials; plaintext when not given. */
  credentials?: ChannelCredentials;
  /** Deadline of each call in milliseconds (default 30 000). */
  timeoutMs?: number;
}

/** Calls the tms.v1.ModelService of one server. */
export class TmsClient {
  /** The generated client, for the calls this class does not wrap. */
  readonly stub: ModelServiceClient;
  private readonly timeoutMs: number;

  constructor(target: string, options: TmsClientOptions = {}) {
    this.stub = new ModelServiceClient(target, options.credentials ?? credentials.createInsecure());
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** The models the server loaded, sorted by name. */
  async listModels(): Promise<ModelInfo[]> {
    const response = await this.call<ListModelsResponse>("ListModels", (o, cb) => this.stub.listModels({}, new Metadata(), o, cb));
    return response.models;
  }

  /** Runs `model` on one image and returns its result, parsed from JSON. */
  async runImage(model: string, image: Image, args?: Record<string, unknown>): Promise<unknown> {
    const request = { model, image: toMessage(image), argsJson: argsJson(args) };
    const response = await this.call<RunImageResponse>("RunImage", (o, cb) => this.stub.runImage(request, new Metadata(), o, cb));
    return JSON.parse(response.resultJson);
  }

  /** Runs an image-to-image model and returns the images it made, as raw pixels. */
  async runImageToImage(
    model: string,
    images: Image | Image[],
    args?: Record<string, unknown>,
  ): Promise<ImageToImageResult> {
    const request = {
      model,
      images: (Array.isArray(images) ? images : [images]).map(toMessage),
      argsJson: argsJson(args),
      outputEncoding: Encoding.ENCODING_RAW,
    };
    const response = await this.call<RunImageToImageResponse>("RunImageToImage", (o, cb) =>
      this.stub.runImageToImage(request, new Metadata(), o, cb),
    );
    return {
      images: response.images.map((m) => ({ ...m, data: new Uint8Array(m.data) })),
      result: response.resultJson ? JSON.parse(response.resultJson) : null,
    };
  }

  /** Closes the channel. */
  close(): void {
    this.stub.close();
  }

  private call<R>(
    method: string,
    start: (options: Partial<CallOptions>, callback: (error: ServiceError | null, response: R) => void) => void,
  ): Promise<R> {
    return new Promise((resolve, reject) => {
      start({ deadline: Date.now() + this.timeoutMs }, (error, response) => {
        if (error) {
          reject(new TmsError(method, error));
        } else {
          resolve(response);
        }
      });
    });
  }
}

function toMessage(image: Image): ImageMessage {
  return { ...image, data: Buffer.from(image.data.buffer, image.data.byteOffset, image.data.byteLength) };
}

function argsJson(args: Record<string, unknown> | undefined): string {
  return args === undefined ? "" : JSON.stringify(args);
}
