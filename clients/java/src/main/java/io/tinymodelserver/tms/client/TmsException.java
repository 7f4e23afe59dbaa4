package io.tinymodelserver.tms.client;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A call that failed: the gRPC status code and the server's details (NOT_FOUND for an unknown
 * model, INVALID_ARGUMENT for a bad image or args, UNAUTHENTICATED for a missing or wrong token,
 * UNAVAILABLE when no worker answered, DEADLINE_EXCEEDED after the client's timeout,
 * FAILED_PRECONDITION for a call on a closed client). The gRPC exception, if any, is the cause.
 *
 * <p>The server attaches structured details to every error status (see the comment above {@code
 * service ModelService} in proto/tms/v1/model_service.proto): a {@code google.rpc.ErrorInfo}
 * ({@link #reason()} such as {@code MODEL_NOT_FOUND}, {@link #domain()} {@code "tms"}, {@link
 * #metadata()} such as {@code {"model": name}}), a {@code google.rpc.BadRequest} ({@link
 * #fieldViolations()}) and, where the same call may succeed later, a {@code google.rpc.RetryInfo}
 * ({@link #retryDelay()}). Programs switch on {@link #code()} and {@link #reason()}; errors made by
 * gRPC itself or by this client have no details.
 */
public final class TmsException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** One {@code google.rpc.BadRequest} violation: the request field at fault, and why. */
  public record FieldViolation(String field, String description) {}

  private final Status.Code code;
  private final String details;
  private final String reason;
  private final String domain;
  private final Map<String, String> metadata;
  private final List<FieldViolation> fieldViolations;
  private final Duration retryDelay; // null: no RetryInfo

  TmsException(Status.Code code, String details, Throwable cause) {
    this(code, details, cause, ErrorInfo.getDefaultInstance(), List.of(), null);
  }

  private TmsException(
      Status.Code code,
      String details,
      Throwable cause,
      ErrorInfo info,
      List<FieldViolation> fieldViolations,
      Duration retryDelay) {
    super(code + (info.getReason().isEmpty() ? "" : " " + info.getReason()) + ": " + details,
        cause);
    this.code = code;
    this.details = details;
    this.reason = info.getReason();
    this.domain = info.getDomain();
    this.metadata = Map.copyOf(info.getMetadataMap());
    this.fieldViolations = List.copyOf(fieldViolations);
    this.retryDelay = retryDelay;
  }

  /** The exception for a failed call, with the details the status carries. */
  static TmsException from(StatusRuntimeException error) {
    Status status = error.getStatus();
    String details = status.getDescription() == null ? "" : status.getDescription();
    return of(status.getCode(), details, StatusProto.fromThrowable(error), error);
  }

  /**
   * The exception for a serialized {@code google.rpc.Status}, as a RunImageStream answer carries a
   * frame's error (a status that cannot be read is UNKNOWN).
   */
  static TmsException fromStatus(ByteString serialized) {
    com.google.rpc.Status full;
    try {
      full = com.google.rpc.Status.parseFrom(serialized);
    } catch (InvalidProtocolBufferException malformed) {
      return new TmsException(Status.Code.UNKNOWN, "an error status that cannot be read", null);
    }
    return of(Status.fromCodeValue(full.getCode()).getCode(), full.getMessage(), full, null);
  }

  private static TmsException of(
      Status.Code code, String details, com.google.rpc.Status full, Throwable cause) {
    ErrorInfo info = ErrorInfo.getDefaultInstance();
    List<FieldViolation> violations = List.of();
    Duration delay = null;
    for (Any detail : full == null ? List.<Any>of() : full.getDetailsList()) {
      try {
        if (detail.is(ErrorInfo.class)) {
          info = detail.unpack(ErrorInfo.class);
        } else if (detail.is(BadRequest.class)) {
          violations =
              detail.unpack(BadRequest.class).getFieldViolationsList().stream()
                  .map(v -> new FieldViolation(v.getField(), v.getDescription()))
                  .toList();
        } else if (detail.is(RetryInfo.class)) {
          com.google.protobuf.Duration wait = detail.unpack(RetryInfo.class).getRetryDelay();
          delay = Duration.ofSeconds(wait.getSeconds(), wait.getNanos());
        }
      } catch (InvalidProtocolBufferException malformed) {
        // a detail that does not parse is left out; the code and description still hold
      }
    }
    return new TmsException(code, details, cause, info, violations, delay);
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return code;
  }

  /** The server's (or gRPC's) description of the failure, for people. */
  public String details() {
    return details;
  }

  /** The {@code google.rpc.ErrorInfo} reason ({@code MODEL_NOT_FOUND}, ...); "" when none. */
  public String reason() {
    return reason;
  }

  /** The {@code google.rpc.ErrorInfo} domain ({@code "tms"}); "" when none. */
  public String domain() {
    return domain;
  }

  /** The {@code google.rpc.ErrorInfo} metadata (e.g. {@code {"model": name}}); empty when none. */
  public Map<String, String> metadata() {
    return metadata;
  }

  /** The {@code google.rpc.BadRequest} violations, in the order sent; empty when none. */
  public List<FieldViolation> fieldViolations() {
    return fieldViolations;
  }

  /** How long to wait before the same call may succeed ({@code google.rpc.RetryInfo}). */
  public Optional<Duration> retryDelay() {
    return Optional.ofNullable(retryDelay);
  }
}
