package io.tinymodelserver.tms.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;

/**
 * A call that failed: the gRPC status code and the server's details (NOT_FOUND for an unknown
 * model, INVALID_ARGUMENT for a bad image or args, UNAUTHENTICATED for a missing or wrong token,
 * UNAVAILABLE when no worker answered, DEADLINE_EXCEEDED after the client's timeout). The gRPC
 * exception is the cause.
 */
public final class TmsException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;
  private final String details;

  TmsException(Status.Code code, String details, Throwable cause) {
    super(code + ": " + details, cause);
    this.code = code;
    this.details = details;
  }

  static TmsException from(StatusRuntimeException error) {
    Status status = error.getStatus();
    String details = status.getDescription() == null ? "" : status.getDescription();
    return new TmsException(status.getCode(), details, error);
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return code;
  }

  /** The server's (or gRPC's) description of the failure. */
  public String details() {
    return details;
  }
}
