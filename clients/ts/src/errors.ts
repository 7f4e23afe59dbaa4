/**
 * Errors the client rejects with.
 *
 *     TmsError        a call ended with a gRPC status other than OK (.code, .details, .metadata)
 *     └── ConnectError  no server answered within the connect timeout (code UNAVAILABLE)
 *
 * Compare `error.code` with grpc-js's `status` (re-exported here): NOT_FOUND for an unknown
 * model, INVALID_ARGUMENT for a malformed image, UNAUTHENTICATED for a missing or wrong token...
 * A call cancelled through its AbortSignal rejects with the signal's reason instead.
 */
import { Metadata, type ServiceError, status } from "@grpc/grpc-js";

/** A call that failed with a gRPC status. */
export class TmsError extends Error {
  /** The gRPC status code. */
  readonly code: status;
  /** The server's (or the client's) message. */
  readonly details: string;
  /** The call's trailing metadata: which worker answered, and its load. */
  readonly metadata: Metadata;

  constructor(code: status, details: string, metadata: Metadata = new Metadata()) {
    super(`${status[code] ?? code}: ${details}`);
    this.name = "TmsError";
    this.code = code;
    this.details = details;
    this.metadata = metadata;
  }

  /** The TmsError for a grpc-js call error. */
  static from(error: ServiceError): TmsError {
    return new TmsError(error.code, error.details, error.metadata ?? new Metadata());
  }
}

/** No TMS server answered at the targets within the connect timeout. */
export class ConnectError extends TmsError {
  constructor(details: string) {
    super(status.UNAVAILABLE, details);
    this.name = "ConnectError";
  }
}
