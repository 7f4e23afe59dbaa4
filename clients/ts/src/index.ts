/**
 * tms-client: a TypeScript/Node client for TMS (Tiny Model Server), over @grpc/grpc-js.
 *
 * ```ts
 * const face = new ModelClient("face", "localhost:50051");
 * console.log(await face.runImage(await readFile("photo.jpg")));
 * face.close();
 * ```
 *
 * Layers, each in its own module: ModelClient (client.ts: requests and replies) -> WorkerPool
 * (pool.ts: discovery, balancing, retries; its state in workers.ts, its strategies in
 * balancers.ts and retry.ts) -> Channel (transport.ts: one connection per worker process).
 */
export { status } from "@grpc/grpc-js";

export { type Balancer, LeastLoaded, type LoadedWorker, RoundRobin } from "./balancers.js";
export {
  type Args,
  type CallOptions,
  type ClientOptions,
  type HealthStatus,
  type ImageToImageResult,
  ModelClient,
  type StreamOptions,
} from "./client.js";
export { ConnectError, type ErrorDetails, errorDetails, type FieldViolation, TmsError } from "./errors.js";
export { ColorOrder, DType, Encoding } from "./gen/tms/v1/image.js";
export { ModelCall, type ModelInfo, ModelServiceClient } from "./gen/tms/v1/model_service.js";
export {
  encodedImage,
  fileEncoding,
  float16,
  type Image,
  type ImageInput,
  type PixelArray,
  pixels,
  rawImage,
  type RawImageOptions,
} from "./images.js";
export { decodeOrca, type LoadReport, readTrailers } from "./load.js";
export { RetryPolicy, type RetrySettings } from "./retry.js";
export type { FrameErrors, FrameResult } from "./stream.js";
export type { TlsOptions } from "./transport.js";
export type { WorkerInfo } from "./workers.js";
