/**
 * Errors the client rejects with.
 *
 *     TmsError        a call ended with a gRPC status other than OK (.code, .details, .metadata,
 *     │               and the server's error details: .reason, .fieldViolations, .retryDelayMs...)
 *     └── ConnectError  no server answered within the connect timeout, or every address
 *                       refused the connection (code UNAVAILABLE)
 *
 * Compare `error.code` with grpc-js's `status` (re-exported here): NOT_FOUND for an unknown
 * model, INVALID_ARGUMENT for a malformed image, UNAUTHENTICATED for a missing or wrong token...
 * and `error.reason` with the reasons listed in proto/tms/v1/model_service.proto
 * (MODEL_NOT_FOUND, INVALID_IMAGE, QUEUE_FULL...). They come from the google.rpc.Status a TMS
 * server attaches to every error (the `grpc-status-details-bin` trailer): its ErrorInfo, its
 * BadRequest and its RetryInfo. A call cancelled through its AbortSignal rejects with the
 * signal's reason instead; a call on a closed client rejects at once with FAILED_PRECONDITION
 * ("this client is closed").
 */
import { Metadata, type ServiceError, status } from "@grpc/grpc-js";

import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details.js";
import { Status } from "./gen/google/rpc/status.js";

/** The trailer that carries a status's details, a serialized google.rpc.Status. */
export const DETAILS_KEY = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

/** A request field at fault (google.rpc.BadRequest.FieldViolation). */
export interface FieldViolation {
  /** The field's path in the request: "image.dtype", "images[2]", "args_json", "texts". */
  readonly field: string;
  readonly description: string;
}

/** What the server said about an error besides its code and message. */
export interface ErrorDetails {
  /** ErrorInfo.reason: MODEL_NOT_FOUND, INVALID_ARGS, QUEUE_FULL... ("" when none). */
  readonly reason: string;
  /** ErrorInfo.domain: "tms" for TMS's own errors ("" when none). */
  readonly domain: string;
  /** ErrorInfo.metadata: e.g. { model: "face" } ({} when none). */
  readonly errorMetadata: Readonly<Record<string, string>>;
  /** BadRequest.field_violations, in the order sent ([] when none). */
  readonly fieldViolations: readonly FieldViolation[];
  /** RetryInfo.retry_delay in milliseconds: the same call may succeed after waiting this long
   * (undefined when the status carries no RetryInfo). */
  readonly retryDelayMs: number | undefined;
}

/** The details of the google.rpc.Status in `metadata` (its `grpc-status-details-bin`); empty
 * fields when there is none or it is malformed. The first ErrorInfo, BadRequests' violations
 * in order, the first RetryInfo; other detail types are skipped. */
export function errorDetails(metadata: Metadata | undefined): ErrorDetails {
  let details: ErrorDetails = { reason: "", domain: "", errorMetadata: {}, fieldViolations: [], retryDelayMs: undefined };
  const [raw] = metadata?.get(DETAILS_KEY) ?? [];
  if (!(raw instanceof Uint8Array)) return details;
  try {
    let info: ErrorInfo | undefined;
    let retry: RetryInfo | undefined;
    const violations: FieldViolation[] = [];
    for (const any of Status.decode(raw).details) {
      const type = any.typeUrl.startsWith(TYPE_PREFIX) ? any.typeUrl.slice(TYPE_PREFIX.length) : any.typeUrl;
      if (type === "google.rpc.ErrorInfo") info ??= ErrorInfo.decode(any.value);
      else if (type === "google.rpc.RetryInfo") retry ??= RetryInfo.decode(any.value);
      else if (type === "google.rpc.BadRequest") {
        for (const { field, description } of BadRequest.decode(any.value).fieldViolations) {
          violations.push({ field, description });
        }
      }
    }
    const delay = retry?.retryDelay;
    details = {
      reason: info?.reason ?? "",
      domain: info?.domain ?? "",
      errorMetadata: { ...info?.metadata },
      fieldViolations: violations,
      retryDelayMs: retry === undefined ? undefined : Math.max(0, (delay?.seconds ?? 0) * 1_000 + (delay?.nanos ?? 0) / 1e6),
    };
  } catch {
    // malformed details: the code and message still tell what happened
  }
  return details;
}

/** A call that failed with a gRPC status. */
export class TmsError extends Error implements ErrorDetails {
  /** The gRPC status code. */
  readonly code: status;
  /** The server's (or the client's) message. */
  readonly details: string;
  /** The call's trailing metadata: which worker answered, its load, the status's details. */
  readonly metadata: Metadata;
  readonly reason: string;
  readonly domain: string;
  readonly errorMetadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  readonly retryDelayMs: number | undefined;

  constructor(code: status, details: string, metadata: Metadata = new Metadata()) {
    super(`${status[code] ?? code}: ${details}`);
    this.name = "TmsError";
    this.code = code;
    this.details = details;
    this.metadata = metadata;
    ({
      reason: this.reason,
      domain: this.domain,
      errorMetadata: this.errorMetadata,
      fieldViolations: this.fieldViolations,
      retryDelayMs: this.retryDelayMs,
    } = errorDetails(metadata));
  }

  /** The TmsError for a grpc-js call error. */
  static from(error: ServiceError): TmsError {
    return new TmsError(error.code, error.details, error.metadata ?? new Metadata());
  }

  /** The TmsError for a serialized google.rpc.Status, as a RunImageStream answer carries a
   * frame's error: its code, message and details, as a failed call's trailer gives them (its
   * `metadata` holds that one trailer). A status that cannot be read is UNKNOWN. */
  static fromStatus(data: Uint8Array): TmsError {
    const metadata = new Metadata();
    metadata.set(DETAILS_KEY, Buffer.from(data));
    try {
      const { code, message } = Status.decode(data);
      if (status[code] !== undefined) return new TmsError(code, message, metadata);
    } catch {
      // read as UNKNOWN below
    }
    return new TmsError(status.UNKNOWN, "an error status that cannot be read");
  }
}

/** No TMS server answered at the targets within the connect timeout, or every address
 * refused the connection at once (then `refused` names them). */
export class ConnectError extends TmsError {
  /** The addresses that refused the connection (nothing listens there), if that is why. */
  readonly refused: readonly string[];

  constructor(details: string, refused: readonly string[] = []) {
    super(status.UNAVAILABLE, details);
    this.name = "ConnectError";
    this.refused = refused;
  }
}
