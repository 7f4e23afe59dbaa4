package io.tinymodelserver.tms.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * ModelService runs the models that a TMS server has loaded.
 * Every worker process of a server serves this service on the same port.
 * Errors. Every call that fails ends with a gRPC status whose details (the
 * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
 * domain "tms" and one of the reasons below; its metadata names the model ("model") when
 * the request names one. A google.rpc.BadRequest names the request field at fault where
 * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
 * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
 * The status message is for people; programs switch on the code and the reason.
 * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
 * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
 *                                          workers than the one called (tms_client routes).
 *                                          Placed elsewhere: RetryInfo 1 s while such a
 *                                          worker is starting or being replaced (a client
 *                                          sends it there only when it knows none).
 * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
 *                                          missing or empty (no image, no texts), a bad
 *                                          model name or output_encoding, a malformed OIP
 *                                          tensor or parameter. BadRequest names the field.
 * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
 *                                          model: bytes/shape/dtype disagree, unknown dtype,
 *                                          encoding or colour order, a corrupt PNG/JPEG, a
 *                                          dtype the model cannot take without loss, a shape
 *                                          it does not take, a colour order it needs.
 *                                          BadRequest: "image", "images[i]" (".dtype",
 *                                          ".shape", ".color_order"), OIP "inputs[0]...".
 * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
 *                                          not an object. BadRequest: "args_json" (OIP:
 *                                          "parameters.args").
 * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
 * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
 *                                          Do not retry. BadRequest names the image.
 * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
 *                                          Do not retry; split the batch. BadRequest: the
 *                                          repeated field.
 * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
 *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
 * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
 *                                          another worker: RetryInfo 0 s.
 * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
 * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
 *                                          be encoded (wrong count, not JSON, not an image).
 * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
 * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
 * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
 * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
 *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
 *                                          the same host, another user, wrong size, proof).
 *                                          Send bytes instead.
 * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
 *                     FAILED_PRECONDITION  names a region this worker has not attached (it
 *                                          restarted, or detached it): attach again, or send
 *                                          bytes. A reference past the region's end is
 *                                          INVALID_IMAGE.
 * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
 * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
 * the receiver's limit (--max-message-mb on the server). The server's code never sees such
 * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
 * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
 * space); the server makes one otherwise. Every response, success or failure, ends with
 * trailing metadata:
 * x-request-id   The call's request id; the server's log lines for the call carry it.
 * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
 *                worker process that answered.
 * tms-load-bin   The worker's load as the call ends: a serialized
 *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
 *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
 *                balance on load (least-loaded) read it; others may ignore it. After a
 *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
 * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class ModelServiceGrpc {

  private ModelServiceGrpc() {}

  public static final java.lang.String SERVICE_NAME = "tms.v1.ModelService";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ListModelsRequest,
      io.tinymodelserver.tms.v1.ListModelsResponse> getListModelsMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ListModels",
      requestType = io.tinymodelserver.tms.v1.ListModelsRequest.class,
      responseType = io.tinymodelserver.tms.v1.ListModelsResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ListModelsRequest,
      io.tinymodelserver.tms.v1.ListModelsResponse> getListModelsMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ListModelsRequest, io.tinymodelserver.tms.v1.ListModelsResponse> getListModelsMethod;
    if ((getListModelsMethod = ModelServiceGrpc.getListModelsMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getListModelsMethod = ModelServiceGrpc.getListModelsMethod) == null) {
          ModelServiceGrpc.getListModelsMethod = getListModelsMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.ListModelsRequest, io.tinymodelserver.tms.v1.ListModelsResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ListModels"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.ListModelsRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.ListModelsResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("ListModels"))
              .build();
        }
      }
    }
    return getListModelsMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.GetModelInfoRequest,
      io.tinymodelserver.tms.v1.GetModelInfoResponse> getGetModelInfoMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GetModelInfo",
      requestType = io.tinymodelserver.tms.v1.GetModelInfoRequest.class,
      responseType = io.tinymodelserver.tms.v1.GetModelInfoResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.GetModelInfoRequest,
      io.tinymodelserver.tms.v1.GetModelInfoResponse> getGetModelInfoMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.GetModelInfoRequest, io.tinymodelserver.tms.v1.GetModelInfoResponse> getGetModelInfoMethod;
    if ((getGetModelInfoMethod = ModelServiceGrpc.getGetModelInfoMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getGetModelInfoMethod = ModelServiceGrpc.getGetModelInfoMethod) == null) {
          ModelServiceGrpc.getGetModelInfoMethod = getGetModelInfoMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.GetModelInfoRequest, io.tinymodelserver.tms.v1.GetModelInfoResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GetModelInfo"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.GetModelInfoRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.GetModelInfoResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("GetModelInfo"))
              .build();
        }
      }
    }
    return getGetModelInfoMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageRequest,
      io.tinymodelserver.tms.v1.RunImageResponse> getRunImageMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RunImage",
      requestType = io.tinymodelserver.tms.v1.RunImageRequest.class,
      responseType = io.tinymodelserver.tms.v1.RunImageResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageRequest,
      io.tinymodelserver.tms.v1.RunImageResponse> getRunImageMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageRequest, io.tinymodelserver.tms.v1.RunImageResponse> getRunImageMethod;
    if ((getRunImageMethod = ModelServiceGrpc.getRunImageMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getRunImageMethod = ModelServiceGrpc.getRunImageMethod) == null) {
          ModelServiceGrpc.getRunImageMethod = getRunImageMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.RunImageRequest, io.tinymodelserver.tms.v1.RunImageResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RunImage"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("RunImage"))
              .build();
        }
      }
    }
    return getRunImageMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageBatchRequest,
      io.tinymodelserver.tms.v1.RunImageBatchResponse> getRunImageBatchMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RunImageBatch",
      requestType = io.tinymodelserver.tms.v1.RunImageBatchRequest.class,
      responseType = io.tinymodelserver.tms.v1.RunImageBatchResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageBatchRequest,
      io.tinymodelserver.tms.v1.RunImageBatchResponse> getRunImageBatchMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageBatchRequest, io.tinymodelserver.tms.v1.RunImageBatchResponse> getRunImageBatchMethod;
    if ((getRunImageBatchMethod = ModelServiceGrpc.getRunImageBatchMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getRunImageBatchMethod = ModelServiceGrpc.getRunImageBatchMethod) == null) {
          ModelServiceGrpc.getRunImageBatchMethod = getRunImageBatchMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.RunImageBatchRequest, io.tinymodelserver.tms.v1.RunImageBatchResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RunImageBatch"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageBatchRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageBatchResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("RunImageBatch"))
              .build();
        }
      }
    }
    return getRunImageBatchMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageToImageRequest,
      io.tinymodelserver.tms.v1.RunImageToImageResponse> getRunImageToImageMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RunImageToImage",
      requestType = io.tinymodelserver.tms.v1.RunImageToImageRequest.class,
      responseType = io.tinymodelserver.tms.v1.RunImageToImageResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageToImageRequest,
      io.tinymodelserver.tms.v1.RunImageToImageResponse> getRunImageToImageMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageToImageRequest, io.tinymodelserver.tms.v1.RunImageToImageResponse> getRunImageToImageMethod;
    if ((getRunImageToImageMethod = ModelServiceGrpc.getRunImageToImageMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getRunImageToImageMethod = ModelServiceGrpc.getRunImageToImageMethod) == null) {
          ModelServiceGrpc.getRunImageToImageMethod = getRunImageToImageMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.RunImageToImageRequest, io.tinymodelserver.tms.v1.RunImageToImageResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RunImageToImage"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageToImageRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageToImageResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("RunImageToImage"))
              .build();
        }
      }
    }
    return getRunImageToImageMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunTextRequest,
      io.tinymodelserver.tms.v1.RunTextResponse> getRunTextMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RunText",
      requestType = io.tinymodelserver.tms.v1.RunTextRequest.class,
      responseType = io.tinymodelserver.tms.v1.RunTextResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunTextRequest,
      io.tinymodelserver.tms.v1.RunTextResponse> getRunTextMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunTextRequest, io.tinymodelserver.tms.v1.RunTextResponse> getRunTextMethod;
    if ((getRunTextMethod = ModelServiceGrpc.getRunTextMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getRunTextMethod = ModelServiceGrpc.getRunTextMethod) == null) {
          ModelServiceGrpc.getRunTextMethod = getRunTextMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.RunTextRequest, io.tinymodelserver.tms.v1.RunTextResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RunText"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunTextRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunTextResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("RunText"))
              .build();
        }
      }
    }
    return getRunTextMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunTextBatchRequest,
      io.tinymodelserver.tms.v1.RunTextBatchResponse> getRunTextBatchMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RunTextBatch",
      requestType = io.tinymodelserver.tms.v1.RunTextBatchRequest.class,
      responseType = io.tinymodelserver.tms.v1.RunTextBatchResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunTextBatchRequest,
      io.tinymodelserver.tms.v1.RunTextBatchResponse> getRunTextBatchMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunTextBatchRequest, io.tinymodelserver.tms.v1.RunTextBatchResponse> getRunTextBatchMethod;
    if ((getRunTextBatchMethod = ModelServiceGrpc.getRunTextBatchMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getRunTextBatchMethod = ModelServiceGrpc.getRunTextBatchMethod) == null) {
          ModelServiceGrpc.getRunTextBatchMethod = getRunTextBatchMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.RunTextBatchRequest, io.tinymodelserver.tms.v1.RunTextBatchResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RunTextBatch"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunTextBatchRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunTextBatchResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("RunTextBatch"))
              .build();
        }
      }
    }
    return getRunTextBatchMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.GetWorkerInfoRequest,
      io.tinymodelserver.tms.v1.GetWorkerInfoResponse> getGetWorkerInfoMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GetWorkerInfo",
      requestType = io.tinymodelserver.tms.v1.GetWorkerInfoRequest.class,
      responseType = io.tinymodelserver.tms.v1.GetWorkerInfoResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.GetWorkerInfoRequest,
      io.tinymodelserver.tms.v1.GetWorkerInfoResponse> getGetWorkerInfoMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.GetWorkerInfoRequest, io.tinymodelserver.tms.v1.GetWorkerInfoResponse> getGetWorkerInfoMethod;
    if ((getGetWorkerInfoMethod = ModelServiceGrpc.getGetWorkerInfoMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getGetWorkerInfoMethod = ModelServiceGrpc.getGetWorkerInfoMethod) == null) {
          ModelServiceGrpc.getGetWorkerInfoMethod = getGetWorkerInfoMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.GetWorkerInfoRequest, io.tinymodelserver.tms.v1.GetWorkerInfoResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GetWorkerInfo"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.GetWorkerInfoRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.GetWorkerInfoResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("GetWorkerInfo"))
              .build();
        }
      }
    }
    return getGetWorkerInfoMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageStreamRequest,
      io.tinymodelserver.tms.v1.RunImageStreamResponse> getRunImageStreamMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RunImageStream",
      requestType = io.tinymodelserver.tms.v1.RunImageStreamRequest.class,
      responseType = io.tinymodelserver.tms.v1.RunImageStreamResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.BIDI_STREAMING)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageStreamRequest,
      io.tinymodelserver.tms.v1.RunImageStreamResponse> getRunImageStreamMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.RunImageStreamRequest, io.tinymodelserver.tms.v1.RunImageStreamResponse> getRunImageStreamMethod;
    if ((getRunImageStreamMethod = ModelServiceGrpc.getRunImageStreamMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getRunImageStreamMethod = ModelServiceGrpc.getRunImageStreamMethod) == null) {
          ModelServiceGrpc.getRunImageStreamMethod = getRunImageStreamMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.RunImageStreamRequest, io.tinymodelserver.tms.v1.RunImageStreamResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.BIDI_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RunImageStream"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageStreamRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.RunImageStreamResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("RunImageStream"))
              .build();
        }
      }
    }
    return getRunImageStreamMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.AttachSharedMemoryRequest,
      io.tinymodelserver.tms.v1.AttachSharedMemoryResponse> getAttachSharedMemoryMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "AttachSharedMemory",
      requestType = io.tinymodelserver.tms.v1.AttachSharedMemoryRequest.class,
      responseType = io.tinymodelserver.tms.v1.AttachSharedMemoryResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.AttachSharedMemoryRequest,
      io.tinymodelserver.tms.v1.AttachSharedMemoryResponse> getAttachSharedMemoryMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.AttachSharedMemoryRequest, io.tinymodelserver.tms.v1.AttachSharedMemoryResponse> getAttachSharedMemoryMethod;
    if ((getAttachSharedMemoryMethod = ModelServiceGrpc.getAttachSharedMemoryMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getAttachSharedMemoryMethod = ModelServiceGrpc.getAttachSharedMemoryMethod) == null) {
          ModelServiceGrpc.getAttachSharedMemoryMethod = getAttachSharedMemoryMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.AttachSharedMemoryRequest, io.tinymodelserver.tms.v1.AttachSharedMemoryResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "AttachSharedMemory"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.AttachSharedMemoryRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.AttachSharedMemoryResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("AttachSharedMemory"))
              .build();
        }
      }
    }
    return getAttachSharedMemoryMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.DetachSharedMemoryRequest,
      io.tinymodelserver.tms.v1.DetachSharedMemoryResponse> getDetachSharedMemoryMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "DetachSharedMemory",
      requestType = io.tinymodelserver.tms.v1.DetachSharedMemoryRequest.class,
      responseType = io.tinymodelserver.tms.v1.DetachSharedMemoryResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.DetachSharedMemoryRequest,
      io.tinymodelserver.tms.v1.DetachSharedMemoryResponse> getDetachSharedMemoryMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.DetachSharedMemoryRequest, io.tinymodelserver.tms.v1.DetachSharedMemoryResponse> getDetachSharedMemoryMethod;
    if ((getDetachSharedMemoryMethod = ModelServiceGrpc.getDetachSharedMemoryMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getDetachSharedMemoryMethod = ModelServiceGrpc.getDetachSharedMemoryMethod) == null) {
          ModelServiceGrpc.getDetachSharedMemoryMethod = getDetachSharedMemoryMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.DetachSharedMemoryRequest, io.tinymodelserver.tms.v1.DetachSharedMemoryResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "DetachSharedMemory"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.DetachSharedMemoryRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.DetachSharedMemoryResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("DetachSharedMemory"))
              .build();
        }
      }
    }
    return getDetachSharedMemoryMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.CallsRequest,
      io.tinymodelserver.tms.v1.CallsResponse> getCallsMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "Calls",
      requestType = io.tinymodelserver.tms.v1.CallsRequest.class,
      responseType = io.tinymodelserver.tms.v1.CallsResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.BIDI_STREAMING)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.CallsRequest,
      io.tinymodelserver.tms.v1.CallsResponse> getCallsMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.CallsRequest, io.tinymodelserver.tms.v1.CallsResponse> getCallsMethod;
    if ((getCallsMethod = ModelServiceGrpc.getCallsMethod) == null) {
      synchronized (ModelServiceGrpc.class) {
        if ((getCallsMethod = ModelServiceGrpc.getCallsMethod) == null) {
          ModelServiceGrpc.getCallsMethod = getCallsMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.CallsRequest, io.tinymodelserver.tms.v1.CallsResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.BIDI_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "Calls"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.CallsRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.CallsResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelServiceMethodDescriptorSupplier("Calls"))
              .build();
        }
      }
    }
    return getCallsMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static ModelServiceStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelServiceStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelServiceStub>() {
        @java.lang.Override
        public ModelServiceStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelServiceStub(channel, callOptions);
        }
      };
    return ModelServiceStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static ModelServiceBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelServiceBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelServiceBlockingV2Stub>() {
        @java.lang.Override
        public ModelServiceBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelServiceBlockingV2Stub(channel, callOptions);
        }
      };
    return ModelServiceBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static ModelServiceBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelServiceBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelServiceBlockingStub>() {
        @java.lang.Override
        public ModelServiceBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelServiceBlockingStub(channel, callOptions);
        }
      };
    return ModelServiceBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static ModelServiceFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelServiceFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelServiceFutureStub>() {
        @java.lang.Override
        public ModelServiceFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelServiceFutureStub(channel, callOptions);
        }
      };
    return ModelServiceFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * ModelService runs the models that a TMS server has loaded.
   * Every worker process of a server serves this service on the same port.
   * Errors. Every call that fails ends with a gRPC status whose details (the
   * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
   * domain "tms" and one of the reasons below; its metadata names the model ("model") when
   * the request names one. A google.rpc.BadRequest names the request field at fault where
   * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
   * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
   * The status message is for people; programs switch on the code and the reason.
   * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
   * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
   *                                          workers than the one called (tms_client routes).
   *                                          Placed elsewhere: RetryInfo 1 s while such a
   *                                          worker is starting or being replaced (a client
   *                                          sends it there only when it knows none).
   * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
   *                                          missing or empty (no image, no texts), a bad
   *                                          model name or output_encoding, a malformed OIP
   *                                          tensor or parameter. BadRequest names the field.
   * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
   *                                          model: bytes/shape/dtype disagree, unknown dtype,
   *                                          encoding or colour order, a corrupt PNG/JPEG, a
   *                                          dtype the model cannot take without loss, a shape
   *                                          it does not take, a colour order it needs.
   *                                          BadRequest: "image", "images[i]" (".dtype",
   *                                          ".shape", ".color_order"), OIP "inputs[0]...".
   * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
   *                                          not an object. BadRequest: "args_json" (OIP:
   *                                          "parameters.args").
   * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
   * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
   *                                          Do not retry. BadRequest names the image.
   * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
   *                                          Do not retry; split the batch. BadRequest: the
   *                                          repeated field.
   * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
   *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
   * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
   *                                          another worker: RetryInfo 0 s.
   * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
   * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
   *                                          be encoded (wrong count, not JSON, not an image).
   * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
   * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
   * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
   * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
   *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
   *                                          the same host, another user, wrong size, proof).
   *                                          Send bytes instead.
   * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
   *                     FAILED_PRECONDITION  names a region this worker has not attached (it
   *                                          restarted, or detached it): attach again, or send
   *                                          bytes. A reference past the region's end is
   *                                          INVALID_IMAGE.
   * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
   * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
   * the receiver's limit (--max-message-mb on the server). The server's code never sees such
   * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
   * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
   * space); the server makes one otherwise. Every response, success or failure, ends with
   * trailing metadata:
   * x-request-id   The call's request id; the server's log lines for the call carry it.
   * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
   *                worker process that answered.
   * tms-load-bin   The worker's load as the call ends: a serialized
   *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
   *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
   *                balance on load (least-loaded) read it; others may ignore it. After a
   *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
   * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * ListModels lists the models that loaded successfully, sorted by name, and those that
     * failed to load, with why.
     * </pre>
     */
    default void listModels(io.tinymodelserver.tms.v1.ListModelsRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ListModelsResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getListModelsMethod(), responseObserver);
    }

    /**
     * <pre>
     * GetModelInfo describes one model: its input and the calls it supports.
     * </pre>
     */
    default void getModelInfo(io.tinymodelserver.tms.v1.GetModelInfoRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.GetModelInfoResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGetModelInfoMethod(), responseObserver);
    }

    /**
     * <pre>
     * RunImage runs a model on one image and returns its structured result.
     * </pre>
     */
    default void runImage(io.tinymodelserver.tms.v1.RunImageRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRunImageMethod(), responseObserver);
    }

    /**
     * <pre>
     * RunImageBatch runs a model on several images and returns one result per image.
     * </pre>
     */
    default void runImageBatch(io.tinymodelserver.tms.v1.RunImageBatchRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageBatchResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRunImageBatchMethod(), responseObserver);
    }

    /**
     * <pre>
     * RunImageToImage runs a model that turns images into images.
     * </pre>
     */
    default void runImageToImage(io.tinymodelserver.tms.v1.RunImageToImageRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageToImageResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRunImageToImageMethod(), responseObserver);
    }

    /**
     * <pre>
     * RunText runs a model on one text.
     * </pre>
     */
    default void runText(io.tinymodelserver.tms.v1.RunTextRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunTextResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRunTextMethod(), responseObserver);
    }

    /**
     * <pre>
     * RunTextBatch runs a model on several texts and returns one result per text.
     * </pre>
     */
    default void runTextBatch(io.tinymodelserver.tms.v1.RunTextBatchRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunTextBatchResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRunTextBatchMethod(), responseObserver);
    }

    /**
     * <pre>
     * GetWorkerInfo says which worker process answered; clients use it to find every
     * worker behind one address.
     * </pre>
     */
    default void getWorkerInfo(io.tinymodelserver.tms.v1.GetWorkerInfoRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.GetWorkerInfoResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGetWorkerInfoMethod(), responseObserver);
    }

    /**
     * <pre>
     * RunImageStream runs one model on a sequence of frames (a video) and answers each frame,
     * in the order sent. The stream stays on the worker that took it, so the model may keep
     * state across frames (a tracker): it is told when a stream opens and closes. A frame that
     * fails is answered with its error and the stream goes on; an error of the stream itself
     * (no such model, bad stream args) ends it with that status. The server reads the next
     * frame only once it has answered the previous one, so a caller that keeps at most N
     * frames unanswered has at most N in flight.
     * </pre>
     */
    default io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageStreamRequest> runImageStream(
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageStreamResponse> responseObserver) {
      return io.grpc.stub.ServerCalls.asyncUnimplementedStreamingCall(getRunImageStreamMethod(), responseObserver);
    }

    /**
     * <pre>
     * AttachSharedMemory lends the worker that answers a POSIX shared-memory region the
     * caller created on the same host, for images passed by reference (Image.shared_memory)
     * instead of bytes. The worker maps the region, checks that its first bytes are the
     * request's proof (so the caller knows it shares the host: an address never proves it),
     * and removes its name, so that no region outlives the two processes holding it. Fails
     * with FAILED_PRECONDITION (reason SHARED_MEMORY_UNAVAILABLE) when the server has shared
     * memory turned off or cannot open the region (another host, another user).
     * </pre>
     */
    default void attachSharedMemory(io.tinymodelserver.tms.v1.AttachSharedMemoryRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.AttachSharedMemoryResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getAttachSharedMemoryMethod(), responseObserver);
    }

    /**
     * <pre>
     * DetachSharedMemory unmaps a region this worker attached. Closing a client detaches its
     * regions; a worker also drops the oldest beyond its limit.
     * </pre>
     */
    default void detachSharedMemory(io.tinymodelserver.tms.v1.DetachSharedMemoryRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.DetachSharedMemoryResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getDetachSharedMemoryMethod(), responseObserver);
    }

    /**
     * <pre>
     * Calls carries unary calls of this service (RunImage, RunImageBatch, RunImageToImage,
     * RunText, RunTextBatch) one after another over one stream, each answered as that call
     * would be: its response, or its error, with its trailing metadata. A message costs much
     * less than a call of its own (no new HTTP/2 stream, headers or status), so a client may
     * keep a few of these open per worker and send each call on an idle one. The server reads
     * the next call only once it has answered the previous one. A call's own metadata (its
     * request id) and time limit travel in its message; the stream's metadata (the call
     * token) holds for all its calls. The stream ends, UNAVAILABLE, when its worker drains:
     * a call that was sent and got no answer was not run.
     * </pre>
     */
    default io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.CallsRequest> calls(
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.CallsResponse> responseObserver) {
      return io.grpc.stub.ServerCalls.asyncUnimplementedStreamingCall(getCallsMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service ModelService.
   * <pre>
   * ModelService runs the models that a TMS server has loaded.
   * Every worker process of a server serves this service on the same port.
   * Errors. Every call that fails ends with a gRPC status whose details (the
   * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
   * domain "tms" and one of the reasons below; its metadata names the model ("model") when
   * the request names one. A google.rpc.BadRequest names the request field at fault where
   * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
   * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
   * The status message is for people; programs switch on the code and the reason.
   * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
   * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
   *                                          workers than the one called (tms_client routes).
   *                                          Placed elsewhere: RetryInfo 1 s while such a
   *                                          worker is starting or being replaced (a client
   *                                          sends it there only when it knows none).
   * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
   *                                          missing or empty (no image, no texts), a bad
   *                                          model name or output_encoding, a malformed OIP
   *                                          tensor or parameter. BadRequest names the field.
   * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
   *                                          model: bytes/shape/dtype disagree, unknown dtype,
   *                                          encoding or colour order, a corrupt PNG/JPEG, a
   *                                          dtype the model cannot take without loss, a shape
   *                                          it does not take, a colour order it needs.
   *                                          BadRequest: "image", "images[i]" (".dtype",
   *                                          ".shape", ".color_order"), OIP "inputs[0]...".
   * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
   *                                          not an object. BadRequest: "args_json" (OIP:
   *                                          "parameters.args").
   * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
   * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
   *                                          Do not retry. BadRequest names the image.
   * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
   *                                          Do not retry; split the batch. BadRequest: the
   *                                          repeated field.
   * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
   *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
   * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
   *                                          another worker: RetryInfo 0 s.
   * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
   * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
   *                                          be encoded (wrong count, not JSON, not an image).
   * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
   * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
   * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
   * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
   *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
   *                                          the same host, another user, wrong size, proof).
   *                                          Send bytes instead.
   * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
   *                     FAILED_PRECONDITION  names a region this worker has not attached (it
   *                                          restarted, or detached it): attach again, or send
   *                                          bytes. A reference past the region's end is
   *                                          INVALID_IMAGE.
   * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
   * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
   * the receiver's limit (--max-message-mb on the server). The server's code never sees such
   * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
   * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
   * space); the server makes one otherwise. Every response, success or failure, ends with
   * trailing metadata:
   * x-request-id   The call's request id; the server's log lines for the call carry it.
   * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
   *                worker process that answered.
   * tms-load-bin   The worker's load as the call ends: a serialized
   *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
   *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
   *                balance on load (least-loaded) read it; others may ignore it. After a
   *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
   * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
   * </pre>
   */
  public static abstract class ModelServiceImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return ModelServiceGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service ModelService.
   * <pre>
   * ModelService runs the models that a TMS server has loaded.
   * Every worker process of a server serves this service on the same port.
   * Errors. Every call that fails ends with a gRPC status whose details (the
   * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
   * domain "tms" and one of the reasons below; its metadata names the model ("model") when
   * the request names one. A google.rpc.BadRequest names the request field at fault where
   * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
   * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
   * The status message is for people; programs switch on the code and the reason.
   * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
   * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
   *                                          workers than the one called (tms_client routes).
   *                                          Placed elsewhere: RetryInfo 1 s while such a
   *                                          worker is starting or being replaced (a client
   *                                          sends it there only when it knows none).
   * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
   *                                          missing or empty (no image, no texts), a bad
   *                                          model name or output_encoding, a malformed OIP
   *                                          tensor or parameter. BadRequest names the field.
   * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
   *                                          model: bytes/shape/dtype disagree, unknown dtype,
   *                                          encoding or colour order, a corrupt PNG/JPEG, a
   *                                          dtype the model cannot take without loss, a shape
   *                                          it does not take, a colour order it needs.
   *                                          BadRequest: "image", "images[i]" (".dtype",
   *                                          ".shape", ".color_order"), OIP "inputs[0]...".
   * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
   *                                          not an object. BadRequest: "args_json" (OIP:
   *                                          "parameters.args").
   * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
   * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
   *                                          Do not retry. BadRequest names the image.
   * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
   *                                          Do not retry; split the batch. BadRequest: the
   *                                          repeated field.
   * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
   *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
   * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
   *                                          another worker: RetryInfo 0 s.
   * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
   * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
   *                                          be encoded (wrong count, not JSON, not an image).
   * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
   * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
   * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
   * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
   *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
   *                                          the same host, another user, wrong size, proof).
   *                                          Send bytes instead.
   * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
   *                     FAILED_PRECONDITION  names a region this worker has not attached (it
   *                                          restarted, or detached it): attach again, or send
   *                                          bytes. A reference past the region's end is
   *                                          INVALID_IMAGE.
   * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
   * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
   * the receiver's limit (--max-message-mb on the server). The server's code never sees such
   * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
   * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
   * space); the server makes one otherwise. Every response, success or failure, ends with
   * trailing metadata:
   * x-request-id   The call's request id; the server's log lines for the call carry it.
   * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
   *                worker process that answered.
   * tms-load-bin   The worker's load as the call ends: a serialized
   *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
   *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
   *                balance on load (least-loaded) read it; others may ignore it. After a
   *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
   * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
   * </pre>
   */
  public static final class ModelServiceStub
      extends io.grpc.stub.AbstractAsyncStub<ModelServiceStub> {
    private ModelServiceStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelServiceStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelServiceStub(channel, callOptions);
    }

    /**
     * <pre>
     * ListModels lists the models that loaded successfully, sorted by name, and those that
     * failed to load, with why.
     * </pre>
     */
    public void listModels(io.tinymodelserver.tms.v1.ListModelsRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ListModelsResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getListModelsMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * GetModelInfo describes one model: its input and the calls it supports.
     * </pre>
     */
    public void getModelInfo(io.tinymodelserver.tms.v1.GetModelInfoRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.GetModelInfoResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGetModelInfoMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * RunImage runs a model on one image and returns its structured result.
     * </pre>
     */
    public void runImage(io.tinymodelserver.tms.v1.RunImageRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRunImageMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * RunImageBatch runs a model on several images and returns one result per image.
     * </pre>
     */
    public void runImageBatch(io.tinymodelserver.tms.v1.RunImageBatchRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageBatchResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRunImageBatchMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * RunImageToImage runs a model that turns images into images.
     * </pre>
     */
    public void runImageToImage(io.tinymodelserver.tms.v1.RunImageToImageRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageToImageResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRunImageToImageMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * RunText runs a model on one text.
     * </pre>
     */
    public void runText(io.tinymodelserver.tms.v1.RunTextRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunTextResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRunTextMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * RunTextBatch runs a model on several texts and returns one result per text.
     * </pre>
     */
    public void runTextBatch(io.tinymodelserver.tms.v1.RunTextBatchRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunTextBatchResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRunTextBatchMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * GetWorkerInfo says which worker process answered; clients use it to find every
     * worker behind one address.
     * </pre>
     */
    public void getWorkerInfo(io.tinymodelserver.tms.v1.GetWorkerInfoRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.GetWorkerInfoResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGetWorkerInfoMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * RunImageStream runs one model on a sequence of frames (a video) and answers each frame,
     * in the order sent. The stream stays on the worker that took it, so the model may keep
     * state across frames (a tracker): it is told when a stream opens and closes. A frame that
     * fails is answered with its error and the stream goes on; an error of the stream itself
     * (no such model, bad stream args) ends it with that status. The server reads the next
     * frame only once it has answered the previous one, so a caller that keeps at most N
     * frames unanswered has at most N in flight.
     * </pre>
     */
    public io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageStreamRequest> runImageStream(
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageStreamResponse> responseObserver) {
      return io.grpc.stub.ClientCalls.asyncBidiStreamingCall(
          getChannel().newCall(getRunImageStreamMethod(), getCallOptions()), responseObserver);
    }

    /**
     * <pre>
     * AttachSharedMemory lends the worker that answers a POSIX shared-memory region the
     * caller created on the same host, for images passed by reference (Image.shared_memory)
     * instead of bytes. The worker maps the region, checks that its first bytes are the
     * request's proof (so the caller knows it shares the host: an address never proves it),
     * and removes its name, so that no region outlives the two processes holding it. Fails
     * with FAILED_PRECONDITION (reason SHARED_MEMORY_UNAVAILABLE) when the server has shared
     * memory turned off or cannot open the region (another host, another user).
     * </pre>
     */
    public void attachSharedMemory(io.tinymodelserver.tms.v1.AttachSharedMemoryRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.AttachSharedMemoryResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getAttachSharedMemoryMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * DetachSharedMemory unmaps a region this worker attached. Closing a client detaches its
     * regions; a worker also drops the oldest beyond its limit.
     * </pre>
     */
    public void detachSharedMemory(io.tinymodelserver.tms.v1.DetachSharedMemoryRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.DetachSharedMemoryResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getDetachSharedMemoryMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Calls carries unary calls of this service (RunImage, RunImageBatch, RunImageToImage,
     * RunText, RunTextBatch) one after another over one stream, each answered as that call
     * would be: its response, or its error, with its trailing metadata. A message costs much
     * less than a call of its own (no new HTTP/2 stream, headers or status), so a client may
     * keep a few of these open per worker and send each call on an idle one. The server reads
     * the next call only once it has answered the previous one. A call's own metadata (its
     * request id) and time limit travel in its message; the stream's metadata (the call
     * token) holds for all its calls. The stream ends, UNAVAILABLE, when its worker drains:
     * a call that was sent and got no answer was not run.
     * </pre>
     */
    public io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.CallsRequest> calls(
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.CallsResponse> responseObserver) {
      return io.grpc.stub.ClientCalls.asyncBidiStreamingCall(
          getChannel().newCall(getCallsMethod(), getCallOptions()), responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service ModelService.
   * <pre>
   * ModelService runs the models that a TMS server has loaded.
   * Every worker process of a server serves this service on the same port.
   * Errors. Every call that fails ends with a gRPC status whose details (the
   * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
   * domain "tms" and one of the reasons below; its metadata names the model ("model") when
   * the request names one. A google.rpc.BadRequest names the request field at fault where
   * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
   * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
   * The status message is for people; programs switch on the code and the reason.
   * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
   * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
   *                                          workers than the one called (tms_client routes).
   *                                          Placed elsewhere: RetryInfo 1 s while such a
   *                                          worker is starting or being replaced (a client
   *                                          sends it there only when it knows none).
   * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
   *                                          missing or empty (no image, no texts), a bad
   *                                          model name or output_encoding, a malformed OIP
   *                                          tensor or parameter. BadRequest names the field.
   * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
   *                                          model: bytes/shape/dtype disagree, unknown dtype,
   *                                          encoding or colour order, a corrupt PNG/JPEG, a
   *                                          dtype the model cannot take without loss, a shape
   *                                          it does not take, a colour order it needs.
   *                                          BadRequest: "image", "images[i]" (".dtype",
   *                                          ".shape", ".color_order"), OIP "inputs[0]...".
   * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
   *                                          not an object. BadRequest: "args_json" (OIP:
   *                                          "parameters.args").
   * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
   * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
   *                                          Do not retry. BadRequest names the image.
   * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
   *                                          Do not retry; split the batch. BadRequest: the
   *                                          repeated field.
   * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
   *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
   * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
   *                                          another worker: RetryInfo 0 s.
   * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
   * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
   *                                          be encoded (wrong count, not JSON, not an image).
   * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
   * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
   * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
   * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
   *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
   *                                          the same host, another user, wrong size, proof).
   *                                          Send bytes instead.
   * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
   *                     FAILED_PRECONDITION  names a region this worker has not attached (it
   *                                          restarted, or detached it): attach again, or send
   *                                          bytes. A reference past the region's end is
   *                                          INVALID_IMAGE.
   * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
   * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
   * the receiver's limit (--max-message-mb on the server). The server's code never sees such
   * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
   * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
   * space); the server makes one otherwise. Every response, success or failure, ends with
   * trailing metadata:
   * x-request-id   The call's request id; the server's log lines for the call carry it.
   * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
   *                worker process that answered.
   * tms-load-bin   The worker's load as the call ends: a serialized
   *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
   *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
   *                balance on load (least-loaded) read it; others may ignore it. After a
   *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
   * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
   * </pre>
   */
  public static final class ModelServiceBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<ModelServiceBlockingV2Stub> {
    private ModelServiceBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelServiceBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelServiceBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * ListModels lists the models that loaded successfully, sorted by name, and those that
     * failed to load, with why.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.ListModelsResponse listModels(io.tinymodelserver.tms.v1.ListModelsRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getListModelsMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetModelInfo describes one model: its input and the calls it supports.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.GetModelInfoResponse getModelInfo(io.tinymodelserver.tms.v1.GetModelInfoRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getGetModelInfoMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImage runs a model on one image and returns its structured result.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunImageResponse runImage(io.tinymodelserver.tms.v1.RunImageRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRunImageMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImageBatch runs a model on several images and returns one result per image.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunImageBatchResponse runImageBatch(io.tinymodelserver.tms.v1.RunImageBatchRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRunImageBatchMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImageToImage runs a model that turns images into images.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunImageToImageResponse runImageToImage(io.tinymodelserver.tms.v1.RunImageToImageRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRunImageToImageMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunText runs a model on one text.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunTextResponse runText(io.tinymodelserver.tms.v1.RunTextRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRunTextMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunTextBatch runs a model on several texts and returns one result per text.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunTextBatchResponse runTextBatch(io.tinymodelserver.tms.v1.RunTextBatchRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRunTextBatchMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetWorkerInfo says which worker process answered; clients use it to find every
     * worker behind one address.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.GetWorkerInfoResponse getWorkerInfo(io.tinymodelserver.tms.v1.GetWorkerInfoRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getGetWorkerInfoMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImageStream runs one model on a sequence of frames (a video) and answers each frame,
     * in the order sent. The stream stays on the worker that took it, so the model may keep
     * state across frames (a tracker): it is told when a stream opens and closes. A frame that
     * fails is answered with its error and the stream goes on; an error of the stream itself
     * (no such model, bad stream args) ends it with that status. The server reads the next
     * frame only once it has answered the previous one, so a caller that keeps at most N
     * frames unanswered has at most N in flight.
     * </pre>
     */
    @io.grpc.ExperimentalApi("https://github.com/grpc/grpc-java/issues/10918")
    public io.grpc.stub.BlockingClientCall<io.tinymodelserver.tms.v1.RunImageStreamRequest, io.tinymodelserver.tms.v1.RunImageStreamResponse>
        runImageStream() {
      return io.grpc.stub.ClientCalls.blockingBidiStreamingCall(
          getChannel(), getRunImageStreamMethod(), getCallOptions());
    }

    /**
     * <pre>
     * AttachSharedMemory lends the worker that answers a POSIX shared-memory region the
     * caller created on the same host, for images passed by reference (Image.shared_memory)
     * instead of bytes. The worker maps the region, checks that its first bytes are the
     * request's proof (so the caller knows it shares the host: an address never proves it),
     * and removes its name, so that no region outlives the two processes holding it. Fails
     * with FAILED_PRECONDITION (reason SHARED_MEMORY_UNAVAILABLE) when the server has shared
     * memory turned off or cannot open the region (another host, another user).
     * </pre>
     */
    public io.tinymodelserver.tms.v1.AttachSharedMemoryResponse attachSharedMemory(io.tinymodelserver.tms.v1.AttachSharedMemoryRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getAttachSharedMemoryMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * DetachSharedMemory unmaps a region this worker attached. Closing a client detaches its
     * regions; a worker also drops the oldest beyond its limit.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.DetachSharedMemoryResponse detachSharedMemory(io.tinymodelserver.tms.v1.DetachSharedMemoryRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getDetachSharedMemoryMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Calls carries unary calls of this service (RunImage, RunImageBatch, RunImageToImage,
     * RunText, RunTextBatch) one after another over one stream, each answered as that call
     * would be: its response, or its error, with its trailing metadata. A message costs much
     * less than a call of its own (no new HTTP/2 stream, headers or status), so a client may
     * keep a few of these open per worker and send each call on an idle one. The server reads
     * the next call only once it has answered the previous one. A call's own metadata (its
     * request id) and time limit travel in its message; the stream's metadata (the call
     * token) holds for all its calls. The stream ends, UNAVAILABLE, when its worker drains:
     * a call that was sent and got no answer was not run.
     * </pre>
     */
    @io.grpc.ExperimentalApi("https://github.com/grpc/grpc-java/issues/10918")
    public io.grpc.stub.BlockingClientCall<io.tinymodelserver.tms.v1.CallsRequest, io.tinymodelserver.tms.v1.CallsResponse>
        calls() {
      return io.grpc.stub.ClientCalls.blockingBidiStreamingCall(
          getChannel(), getCallsMethod(), getCallOptions());
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service ModelService.
   * <pre>
   * ModelService runs the models that a TMS server has loaded.
   * Every worker process of a server serves this service on the same port.
   * Errors. Every call that fails ends with a gRPC status whose details (the
   * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
   * domain "tms" and one of the reasons below; its metadata names the model ("model") when
   * the request names one. A google.rpc.BadRequest names the request field at fault where
   * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
   * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
   * The status message is for people; programs switch on the code and the reason.
   * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
   * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
   *                                          workers than the one called (tms_client routes).
   *                                          Placed elsewhere: RetryInfo 1 s while such a
   *                                          worker is starting or being replaced (a client
   *                                          sends it there only when it knows none).
   * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
   *                                          missing or empty (no image, no texts), a bad
   *                                          model name or output_encoding, a malformed OIP
   *                                          tensor or parameter. BadRequest names the field.
   * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
   *                                          model: bytes/shape/dtype disagree, unknown dtype,
   *                                          encoding or colour order, a corrupt PNG/JPEG, a
   *                                          dtype the model cannot take without loss, a shape
   *                                          it does not take, a colour order it needs.
   *                                          BadRequest: "image", "images[i]" (".dtype",
   *                                          ".shape", ".color_order"), OIP "inputs[0]...".
   * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
   *                                          not an object. BadRequest: "args_json" (OIP:
   *                                          "parameters.args").
   * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
   * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
   *                                          Do not retry. BadRequest names the image.
   * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
   *                                          Do not retry; split the batch. BadRequest: the
   *                                          repeated field.
   * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
   *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
   * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
   *                                          another worker: RetryInfo 0 s.
   * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
   * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
   *                                          be encoded (wrong count, not JSON, not an image).
   * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
   * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
   * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
   * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
   *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
   *                                          the same host, another user, wrong size, proof).
   *                                          Send bytes instead.
   * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
   *                     FAILED_PRECONDITION  names a region this worker has not attached (it
   *                                          restarted, or detached it): attach again, or send
   *                                          bytes. A reference past the region's end is
   *                                          INVALID_IMAGE.
   * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
   * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
   * the receiver's limit (--max-message-mb on the server). The server's code never sees such
   * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
   * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
   * space); the server makes one otherwise. Every response, success or failure, ends with
   * trailing metadata:
   * x-request-id   The call's request id; the server's log lines for the call carry it.
   * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
   *                worker process that answered.
   * tms-load-bin   The worker's load as the call ends: a serialized
   *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
   *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
   *                balance on load (least-loaded) read it; others may ignore it. After a
   *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
   * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
   * </pre>
   */
  public static final class ModelServiceBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<ModelServiceBlockingStub> {
    private ModelServiceBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelServiceBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelServiceBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * ListModels lists the models that loaded successfully, sorted by name, and those that
     * failed to load, with why.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.ListModelsResponse listModels(io.tinymodelserver.tms.v1.ListModelsRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getListModelsMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetModelInfo describes one model: its input and the calls it supports.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.GetModelInfoResponse getModelInfo(io.tinymodelserver.tms.v1.GetModelInfoRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGetModelInfoMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImage runs a model on one image and returns its structured result.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunImageResponse runImage(io.tinymodelserver.tms.v1.RunImageRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRunImageMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImageBatch runs a model on several images and returns one result per image.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunImageBatchResponse runImageBatch(io.tinymodelserver.tms.v1.RunImageBatchRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRunImageBatchMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunImageToImage runs a model that turns images into images.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunImageToImageResponse runImageToImage(io.tinymodelserver.tms.v1.RunImageToImageRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRunImageToImageMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunText runs a model on one text.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunTextResponse runText(io.tinymodelserver.tms.v1.RunTextRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRunTextMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * RunTextBatch runs a model on several texts and returns one result per text.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.RunTextBatchResponse runTextBatch(io.tinymodelserver.tms.v1.RunTextBatchRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRunTextBatchMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetWorkerInfo says which worker process answered; clients use it to find every
     * worker behind one address.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.GetWorkerInfoResponse getWorkerInfo(io.tinymodelserver.tms.v1.GetWorkerInfoRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGetWorkerInfoMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * AttachSharedMemory lends the worker that answers a POSIX shared-memory region the
     * caller created on the same host, for images passed by reference (Image.shared_memory)
     * instead of bytes. The worker maps the region, checks that its first bytes are the
     * request's proof (so the caller knows it shares the host: an address never proves it),
     * and removes its name, so that no region outlives the two processes holding it. Fails
     * with FAILED_PRECONDITION (reason SHARED_MEMORY_UNAVAILABLE) when the server has shared
     * memory turned off or cannot open the region (another host, another user).
     * </pre>
     */
    public io.tinymodelserver.tms.v1.AttachSharedMemoryResponse attachSharedMemory(io.tinymodelserver.tms.v1.AttachSharedMemoryRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getAttachSharedMemoryMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * DetachSharedMemory unmaps a region this worker attached. Closing a client detaches its
     * regions; a worker also drops the oldest beyond its limit.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.DetachSharedMemoryResponse detachSharedMemory(io.tinymodelserver.tms.v1.DetachSharedMemoryRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getDetachSharedMemoryMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service ModelService.
   * <pre>
   * ModelService runs the models that a TMS server has loaded.
   * Every worker process of a server serves this service on the same port.
   * Errors. Every call that fails ends with a gRPC status whose details (the
   * grpc-status-details-bin trailer, a google.rpc.Status) hold a google.rpc.ErrorInfo of
   * domain "tms" and one of the reasons below; its metadata names the model ("model") when
   * the request names one. A google.rpc.BadRequest names the request field at fault where
   * there is one (e.g. "image", "images[2].dtype", "args_json", "texts"), and a
   * google.rpc.RetryInfo says how long to wait where the same call may succeed later.
   * The status message is for people; programs switch on the code and the reason.
   * MODEL_NOT_FOUND     NOT_FOUND            No model of that name (or, OIP, no such version).
   * MODEL_NOT_LOADED    FAILED_PRECONDITION  The model failed to load, or is placed on other
   *                                          workers than the one called (tms_client routes).
   *                                          Placed elsewhere: RetryInfo 1 s while such a
   *                                          worker is starting or being replaced (a client
   *                                          sends it there only when it knows none).
   * INVALID_REQUEST     INVALID_ARGUMENT     Malformed request message, a required field
   *                                          missing or empty (no image, no texts), a bad
   *                                          model name or output_encoding, a malformed OIP
   *                                          tensor or parameter. BadRequest names the field.
   * INVALID_IMAGE       INVALID_ARGUMENT     An image that cannot be decoded or given to the
   *                                          model: bytes/shape/dtype disagree, unknown dtype,
   *                                          encoding or colour order, a corrupt PNG/JPEG, a
   *                                          dtype the model cannot take without loss, a shape
   *                                          it does not take, a colour order it needs.
   *                                          BadRequest: "image", "images[i]" (".dtype",
   *                                          ".shape", ".color_order"), OIP "inputs[0]...".
   * INVALID_ARGS        INVALID_ARGUMENT     args_json too long, nested too deep, not JSON, or
   *                                          not an object. BadRequest: "args_json" (OIP:
   *                                          "parameters.args").
   * INVALID_INPUT       INVALID_ARGUMENT     The model refused its input (raised InvalidInput).
   * IMAGE_TOO_LARGE     INVALID_ARGUMENT     An image declares more pixels than --max-pixels.
   *                                          Do not retry. BadRequest names the image.
   * BATCH_TOO_LARGE     INVALID_ARGUMENT     More images or texts than --max-batch-size.
   *                                          Do not retry; split the batch. BadRequest: the
   *                                          repeated field.
   * QUEUE_FULL          RESOURCE_EXHAUSTED   The worker runs --threads calls and holds
   *                                          --max-queued-calls more. Retry: RetryInfo 0.1 s.
   * DRAINING            UNAVAILABLE          The worker is shutting down. Retry at once on
   *                                          another worker: RetryInfo 0 s.
   * RELOAD_IN_PROGRESS  UNAVAILABLE          (AdminService) another ReloadModel is running.
   * MODEL_FAILED        INTERNAL             The model raised, or returned a result that cannot
   *                                          be encoded (wrong count, not JSON, not an image).
   * UNSUPPORTED_CALL    UNIMPLEMENTED        The model does not support this RPC.
   * UNAUTHENTICATED     UNAUTHENTICATED      No call token, or one not in --tokens-file.
   * PERMISSION_DENIED   PERMISSION_DENIED    (AdminService) admin is off, or no admin token.
   * SHARED_MEMORY_UNAVAILABLE                AttachSharedMemory: shared memory is off on the
   *                     FAILED_PRECONDITION  server, or the region cannot be opened here (not
   *                                          the same host, another user, wrong size, proof).
   *                                          Send bytes instead.
   * SHARED_MEMORY_NOT_ATTACHED               An Image.shared_memory (or output_shared_memory)
   *                     FAILED_PRECONDITION  names a region this worker has not attached (it
   *                                          restarted, or detached it): attach again, or send
   *                                          bytes. A reference past the region's end is
   *                                          INVALID_IMAGE.
   * INTERNAL            INTERNAL             A bug in the server (its traceback is logged).
   * A RESOURCE_EXHAUSTED without an ErrorInfo comes from gRPC itself: a message larger than
   * the receiver's limit (--max-message-mb on the server). The server's code never sees such
   * a message, so it cannot attach MESSAGE_TOO_LARGE; do not retry it.
   * Metadata. A caller may send "x-request-id" (1 to 128 printable ASCII characters, no
   * space); the server makes one otherwise. Every response, success or failure, ends with
   * trailing metadata:
   * x-request-id   The call's request id; the server's log lines for the call carry it.
   * tms-worker     "&lt;instance_id&gt;/&lt;pid&gt;": the server (GetWorkerInfoResponse.instance_id) and
   *                worker process that answered.
   * tms-load-bin   The worker's load as the call ends: a serialized
   *                xds.data.orca.v3.OrcaLoadReport whose named_metrics hold "in_flight" (calls
   *                it is running, this one included) and "queued" (calls waiting for a thread). Clients that
   *                balance on load (least-loaded) read it; others may ignore it. After a
   *                reload it also holds "reload" (GetWorkerInfoResponse.reload).
   * Images: see tms.v1.Image for byte order, value ranges, casts, colour and EXIF rules.
   * </pre>
   */
  public static final class ModelServiceFutureStub
      extends io.grpc.stub.AbstractFutureStub<ModelServiceFutureStub> {
    private ModelServiceFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelServiceFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelServiceFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * ListModels lists the models that loaded successfully, sorted by name, and those that
     * failed to load, with why.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.ListModelsResponse> listModels(
        io.tinymodelserver.tms.v1.ListModelsRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getListModelsMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * GetModelInfo describes one model: its input and the calls it supports.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.GetModelInfoResponse> getModelInfo(
        io.tinymodelserver.tms.v1.GetModelInfoRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGetModelInfoMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * RunImage runs a model on one image and returns its structured result.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.RunImageResponse> runImage(
        io.tinymodelserver.tms.v1.RunImageRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRunImageMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * RunImageBatch runs a model on several images and returns one result per image.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.RunImageBatchResponse> runImageBatch(
        io.tinymodelserver.tms.v1.RunImageBatchRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRunImageBatchMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * RunImageToImage runs a model that turns images into images.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.RunImageToImageResponse> runImageToImage(
        io.tinymodelserver.tms.v1.RunImageToImageRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRunImageToImageMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * RunText runs a model on one text.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.RunTextResponse> runText(
        io.tinymodelserver.tms.v1.RunTextRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRunTextMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * RunTextBatch runs a model on several texts and returns one result per text.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.RunTextBatchResponse> runTextBatch(
        io.tinymodelserver.tms.v1.RunTextBatchRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRunTextBatchMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * GetWorkerInfo says which worker process answered; clients use it to find every
     * worker behind one address.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.GetWorkerInfoResponse> getWorkerInfo(
        io.tinymodelserver.tms.v1.GetWorkerInfoRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGetWorkerInfoMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * AttachSharedMemory lends the worker that answers a POSIX shared-memory region the
     * caller created on the same host, for images passed by reference (Image.shared_memory)
     * instead of bytes. The worker maps the region, checks that its first bytes are the
     * request's proof (so the caller knows it shares the host: an address never proves it),
     * and removes its name, so that no region outlives the two processes holding it. Fails
     * with FAILED_PRECONDITION (reason SHARED_MEMORY_UNAVAILABLE) when the server has shared
     * memory turned off or cannot open the region (another host, another user).
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.AttachSharedMemoryResponse> attachSharedMemory(
        io.tinymodelserver.tms.v1.AttachSharedMemoryRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getAttachSharedMemoryMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * DetachSharedMemory unmaps a region this worker attached. Closing a client detaches its
     * regions; a worker also drops the oldest beyond its limit.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.DetachSharedMemoryResponse> detachSharedMemory(
        io.tinymodelserver.tms.v1.DetachSharedMemoryRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getDetachSharedMemoryMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_LIST_MODELS = 0;
  private static final int METHODID_GET_MODEL_INFO = 1;
  private static final int METHODID_RUN_IMAGE = 2;
  private static final int METHODID_RUN_IMAGE_BATCH = 3;
  private static final int METHODID_RUN_IMAGE_TO_IMAGE = 4;
  private static final int METHODID_RUN_TEXT = 5;
  private static final int METHODID_RUN_TEXT_BATCH = 6;
  private static final int METHODID_GET_WORKER_INFO = 7;
  private static final int METHODID_ATTACH_SHARED_MEMORY = 8;
  private static final int METHODID_DETACH_SHARED_MEMORY = 9;
  private static final int METHODID_RUN_IMAGE_STREAM = 10;
  private static final int METHODID_CALLS = 11;

  private static final class MethodHandlers<Req, Resp> implements
      io.grpc.stub.ServerCalls.UnaryMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ServerStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ClientStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.BidiStreamingMethod<Req, Resp> {
    private final AsyncService serviceImpl;
    private final int methodId;

    MethodHandlers(AsyncService serviceImpl, int methodId) {
      this.serviceImpl = serviceImpl;
      this.methodId = methodId;
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public void invoke(Req request, io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_LIST_MODELS:
          serviceImpl.listModels((io.tinymodelserver.tms.v1.ListModelsRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ListModelsResponse>) responseObserver);
          break;
        case METHODID_GET_MODEL_INFO:
          serviceImpl.getModelInfo((io.tinymodelserver.tms.v1.GetModelInfoRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.GetModelInfoResponse>) responseObserver);
          break;
        case METHODID_RUN_IMAGE:
          serviceImpl.runImage((io.tinymodelserver.tms.v1.RunImageRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageResponse>) responseObserver);
          break;
        case METHODID_RUN_IMAGE_BATCH:
          serviceImpl.runImageBatch((io.tinymodelserver.tms.v1.RunImageBatchRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageBatchResponse>) responseObserver);
          break;
        case METHODID_RUN_IMAGE_TO_IMAGE:
          serviceImpl.runImageToImage((io.tinymodelserver.tms.v1.RunImageToImageRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageToImageResponse>) responseObserver);
          break;
        case METHODID_RUN_TEXT:
          serviceImpl.runText((io.tinymodelserver.tms.v1.RunTextRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunTextResponse>) responseObserver);
          break;
        case METHODID_RUN_TEXT_BATCH:
          serviceImpl.runTextBatch((io.tinymodelserver.tms.v1.RunTextBatchRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunTextBatchResponse>) responseObserver);
          break;
        case METHODID_GET_WORKER_INFO:
          serviceImpl.getWorkerInfo((io.tinymodelserver.tms.v1.GetWorkerInfoRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.GetWorkerInfoResponse>) responseObserver);
          break;
        case METHODID_ATTACH_SHARED_MEMORY:
          serviceImpl.attachSharedMemory((io.tinymodelserver.tms.v1.AttachSharedMemoryRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.AttachSharedMemoryResponse>) responseObserver);
          break;
        case METHODID_DETACH_SHARED_MEMORY:
          serviceImpl.detachSharedMemory((io.tinymodelserver.tms.v1.DetachSharedMemoryRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.DetachSharedMemoryResponse>) responseObserver);
          break;
        default:
          throw new AssertionError();
      }
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public io.grpc.stub.StreamObserver<Req> invoke(
        io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_RUN_IMAGE_STREAM:
          return (io.grpc.stub.StreamObserver<Req>) serviceImpl.runImageStream(
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.RunImageStreamResponse>) responseObserver);
        case METHODID_CALLS:
          return (io.grpc.stub.StreamObserver<Req>) serviceImpl.calls(
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.CallsResponse>) responseObserver);
        default:
          throw new AssertionError();
      }
    }
  }

  public static final io.grpc.ServerServiceDefinition bindService(AsyncService service) {
    return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
        .addMethod(
          getListModelsMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.ListModelsRequest,
              io.tinymodelserver.tms.v1.ListModelsResponse>(
                service, METHODID_LIST_MODELS)))
        .addMethod(
          getGetModelInfoMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.GetModelInfoRequest,
              io.tinymodelserver.tms.v1.GetModelInfoResponse>(
                service, METHODID_GET_MODEL_INFO)))
        .addMethod(
          getRunImageMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.RunImageRequest,
              io.tinymodelserver.tms.v1.RunImageResponse>(
                service, METHODID_RUN_IMAGE)))
        .addMethod(
          getRunImageBatchMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.RunImageBatchRequest,
              io.tinymodelserver.tms.v1.RunImageBatchResponse>(
                service, METHODID_RUN_IMAGE_BATCH)))
        .addMethod(
          getRunImageToImageMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.RunImageToImageRequest,
              io.tinymodelserver.tms.v1.RunImageToImageResponse>(
                service, METHODID_RUN_IMAGE_TO_IMAGE)))
        .addMethod(
          getRunTextMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.RunTextRequest,
              io.tinymodelserver.tms.v1.RunTextResponse>(
                service, METHODID_RUN_TEXT)))
        .addMethod(
          getRunTextBatchMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.RunTextBatchRequest,
              io.tinymodelserver.tms.v1.RunTextBatchResponse>(
                service, METHODID_RUN_TEXT_BATCH)))
        .addMethod(
          getGetWorkerInfoMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.GetWorkerInfoRequest,
              io.tinymodelserver.tms.v1.GetWorkerInfoResponse>(
                service, METHODID_GET_WORKER_INFO)))
        .addMethod(
          getRunImageStreamMethod(),
          io.grpc.stub.ServerCalls.asyncBidiStreamingCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.RunImageStreamRequest,
              io.tinymodelserver.tms.v1.RunImageStreamResponse>(
                service, METHODID_RUN_IMAGE_STREAM)))
        .addMethod(
          getAttachSharedMemoryMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.AttachSharedMemoryRequest,
              io.tinymodelserver.tms.v1.AttachSharedMemoryResponse>(
                service, METHODID_ATTACH_SHARED_MEMORY)))
        .addMethod(
          getDetachSharedMemoryMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.DetachSharedMemoryRequest,
              io.tinymodelserver.tms.v1.DetachSharedMemoryResponse>(
                service, METHODID_DETACH_SHARED_MEMORY)))
        .addMethod(
          getCallsMethod(),
          io.grpc.stub.ServerCalls.asyncBidiStreamingCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.CallsRequest,
              io.tinymodelserver.tms.v1.CallsResponse>(
                service, METHODID_CALLS)))
        .build();
  }

  private static abstract class ModelServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    ModelServiceBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return io.tinymodelserver.tms.v1.ModelServiceProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("ModelService");
    }
  }

  private static final class ModelServiceFileDescriptorSupplier
      extends ModelServiceBaseDescriptorSupplier {
    ModelServiceFileDescriptorSupplier() {}
  }

  private static final class ModelServiceMethodDescriptorSupplier
      extends ModelServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    ModelServiceMethodDescriptorSupplier(java.lang.String methodName) {
      this.methodName = methodName;
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.MethodDescriptor getMethodDescriptor() {
      return getServiceDescriptor().findMethodByName(methodName);
    }
  }

  private static volatile io.grpc.ServiceDescriptor serviceDescriptor;

  public static io.grpc.ServiceDescriptor getServiceDescriptor() {
    io.grpc.ServiceDescriptor result = serviceDescriptor;
    if (result == null) {
      synchronized (ModelServiceGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new ModelServiceFileDescriptorSupplier())
              .addMethod(getListModelsMethod())
              .addMethod(getGetModelInfoMethod())
              .addMethod(getRunImageMethod())
              .addMethod(getRunImageBatchMethod())
              .addMethod(getRunImageToImageMethod())
              .addMethod(getRunTextMethod())
              .addMethod(getRunTextBatchMethod())
              .addMethod(getGetWorkerInfoMethod())
              .addMethod(getRunImageStreamMethod())
              .addMethod(getAttachSharedMemoryMethod())
              .addMethod(getDetachSharedMemoryMethod())
              .addMethod(getCallsMethod())
              .build();
        }
      }
    }
    return result;
  }
}
