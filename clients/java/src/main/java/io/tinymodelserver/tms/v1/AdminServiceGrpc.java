package io.tinymodelserver.tms.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * AdminService holds operations for the operators of a server, not for its clients.
 * It is off unless the server is started with --admin-tokens-file: every call must carry
 * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
 * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
 * is off, ends with PERMISSION_DENIED. No RPC stops the server.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class AdminServiceGrpc {

  private AdminServiceGrpc() {}

  public static final java.lang.String SERVICE_NAME = "tms.v1.AdminService";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ReloadModelRequest,
      io.tinymodelserver.tms.v1.ReloadModelResponse> getReloadModelMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ReloadModel",
      requestType = io.tinymodelserver.tms.v1.ReloadModelRequest.class,
      responseType = io.tinymodelserver.tms.v1.ReloadModelResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ReloadModelRequest,
      io.tinymodelserver.tms.v1.ReloadModelResponse> getReloadModelMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ReloadModelRequest, io.tinymodelserver.tms.v1.ReloadModelResponse> getReloadModelMethod;
    if ((getReloadModelMethod = AdminServiceGrpc.getReloadModelMethod) == null) {
      synchronized (AdminServiceGrpc.class) {
        if ((getReloadModelMethod = AdminServiceGrpc.getReloadModelMethod) == null) {
          AdminServiceGrpc.getReloadModelMethod = getReloadModelMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.ReloadModelRequest, io.tinymodelserver.tms.v1.ReloadModelResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ReloadModel"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.ReloadModelRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.ReloadModelResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AdminServiceMethodDescriptorSupplier("ReloadModel"))
              .build();
        }
      }
    }
    return getReloadModelMethod;
  }

  private static volatile io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ListWorkersRequest,
      io.tinymodelserver.tms.v1.ListWorkersResponse> getListWorkersMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ListWorkers",
      requestType = io.tinymodelserver.tms.v1.ListWorkersRequest.class,
      responseType = io.tinymodelserver.tms.v1.ListWorkersResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ListWorkersRequest,
      io.tinymodelserver.tms.v1.ListWorkersResponse> getListWorkersMethod() {
    io.grpc.MethodDescriptor<io.tinymodelserver.tms.v1.ListWorkersRequest, io.tinymodelserver.tms.v1.ListWorkersResponse> getListWorkersMethod;
    if ((getListWorkersMethod = AdminServiceGrpc.getListWorkersMethod) == null) {
      synchronized (AdminServiceGrpc.class) {
        if ((getListWorkersMethod = AdminServiceGrpc.getListWorkersMethod) == null) {
          AdminServiceGrpc.getListWorkersMethod = getListWorkersMethod =
              io.grpc.MethodDescriptor.<io.tinymodelserver.tms.v1.ListWorkersRequest, io.tinymodelserver.tms.v1.ListWorkersResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ListWorkers"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.ListWorkersRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  io.tinymodelserver.tms.v1.ListWorkersResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AdminServiceMethodDescriptorSupplier("ListWorkers"))
              .build();
        }
      }
    }
    return getListWorkersMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static AdminServiceStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AdminServiceStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AdminServiceStub>() {
        @java.lang.Override
        public AdminServiceStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AdminServiceStub(channel, callOptions);
        }
      };
    return AdminServiceStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static AdminServiceBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AdminServiceBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AdminServiceBlockingV2Stub>() {
        @java.lang.Override
        public AdminServiceBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AdminServiceBlockingV2Stub(channel, callOptions);
        }
      };
    return AdminServiceBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static AdminServiceBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AdminServiceBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AdminServiceBlockingStub>() {
        @java.lang.Override
        public AdminServiceBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AdminServiceBlockingStub(channel, callOptions);
        }
      };
    return AdminServiceBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static AdminServiceFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AdminServiceFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AdminServiceFutureStub>() {
        @java.lang.Override
        public AdminServiceFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AdminServiceFutureStub(channel, callOptions);
        }
      };
    return AdminServiceFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * AdminService holds operations for the operators of a server, not for its clients.
   * It is off unless the server is started with --admin-tokens-file: every call must carry
   * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
   * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
   * is off, ends with PERMISSION_DENIED. No RPC stops the server.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * ReloadModel loads a model again from disk (its folder, or its entry point) in every
     * worker process of the server, and says how each fared. A worker whose new load fails
     * keeps serving the model it had. Calls in flight finish on the model they started on.
     * </pre>
     */
    default void reloadModel(io.tinymodelserver.tms.v1.ReloadModelRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ReloadModelResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getReloadModelMethod(), responseObserver);
    }

    /**
     * <pre>
     * ListWorkers lists the worker processes of the server with their pids and load.
     * </pre>
     */
    default void listWorkers(io.tinymodelserver.tms.v1.ListWorkersRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ListWorkersResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getListWorkersMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service AdminService.
   * <pre>
   * AdminService holds operations for the operators of a server, not for its clients.
   * It is off unless the server is started with --admin-tokens-file: every call must carry
   * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
   * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
   * is off, ends with PERMISSION_DENIED. No RPC stops the server.
   * </pre>
   */
  public static abstract class AdminServiceImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return AdminServiceGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service AdminService.
   * <pre>
   * AdminService holds operations for the operators of a server, not for its clients.
   * It is off unless the server is started with --admin-tokens-file: every call must carry
   * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
   * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
   * is off, ends with PERMISSION_DENIED. No RPC stops the server.
   * </pre>
   */
  public static final class AdminServiceStub
      extends io.grpc.stub.AbstractAsyncStub<AdminServiceStub> {
    private AdminServiceStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AdminServiceStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AdminServiceStub(channel, callOptions);
    }

    /**
     * <pre>
     * ReloadModel loads a model again from disk (its folder, or its entry point) in every
     * worker process of the server, and says how each fared. A worker whose new load fails
     * keeps serving the model it had. Calls in flight finish on the model they started on.
     * </pre>
     */
    public void reloadModel(io.tinymodelserver.tms.v1.ReloadModelRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ReloadModelResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getReloadModelMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * ListWorkers lists the worker processes of the server with their pids and load.
     * </pre>
     */
    public void listWorkers(io.tinymodelserver.tms.v1.ListWorkersRequest request,
        io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ListWorkersResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getListWorkersMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service AdminService.
   * <pre>
   * AdminService holds operations for the operators of a server, not for its clients.
   * It is off unless the server is started with --admin-tokens-file: every call must carry
   * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
   * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
   * is off, ends with PERMISSION_DENIED. No RPC stops the server.
   * </pre>
   */
  public static final class AdminServiceBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<AdminServiceBlockingV2Stub> {
    private AdminServiceBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AdminServiceBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AdminServiceBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * ReloadModel loads a model again from disk (its folder, or its entry point) in every
     * worker process of the server, and says how each fared. A worker whose new load fails
     * keeps serving the model it had. Calls in flight finish on the model they started on.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.ReloadModelResponse reloadModel(io.tinymodelserver.tms.v1.ReloadModelRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getReloadModelMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListWorkers lists the worker processes of the server with their pids and load.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.ListWorkersResponse listWorkers(io.tinymodelserver.tms.v1.ListWorkersRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getListWorkersMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service AdminService.
   * <pre>
   * AdminService holds operations for the operators of a server, not for its clients.
   * It is off unless the server is started with --admin-tokens-file: every call must carry
   * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
   * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
   * is off, ends with PERMISSION_DENIED. No RPC stops the server.
   * </pre>
   */
  public static final class AdminServiceBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<AdminServiceBlockingStub> {
    private AdminServiceBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AdminServiceBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AdminServiceBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * ReloadModel loads a model again from disk (its folder, or its entry point) in every
     * worker process of the server, and says how each fared. A worker whose new load fails
     * keeps serving the model it had. Calls in flight finish on the model they started on.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.ReloadModelResponse reloadModel(io.tinymodelserver.tms.v1.ReloadModelRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getReloadModelMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListWorkers lists the worker processes of the server with their pids and load.
     * </pre>
     */
    public io.tinymodelserver.tms.v1.ListWorkersResponse listWorkers(io.tinymodelserver.tms.v1.ListWorkersRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getListWorkersMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service AdminService.
   * <pre>
   * AdminService holds operations for the operators of a server, not for its clients.
   * It is off unless the server is started with --admin-tokens-file: every call must carry
   * the metadata `authorization: Bearer &lt;admin token&gt;` with a token from that file (the
   * tokens of --tokens-file are not admin tokens). Any other call, and every call while it
   * is off, ends with PERMISSION_DENIED. No RPC stops the server.
   * </pre>
   */
  public static final class AdminServiceFutureStub
      extends io.grpc.stub.AbstractFutureStub<AdminServiceFutureStub> {
    private AdminServiceFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AdminServiceFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AdminServiceFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * ReloadModel loads a model again from disk (its folder, or its entry point) in every
     * worker process of the server, and says how each fared. A worker whose new load fails
     * keeps serving the model it had. Calls in flight finish on the model they started on.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.ReloadModelResponse> reloadModel(
        io.tinymodelserver.tms.v1.ReloadModelRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getReloadModelMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * ListWorkers lists the worker processes of the server with their pids and load.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<io.tinymodelserver.tms.v1.ListWorkersResponse> listWorkers(
        io.tinymodelserver.tms.v1.ListWorkersRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getListWorkersMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_RELOAD_MODEL = 0;
  private static final int METHODID_LIST_WORKERS = 1;

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
        case METHODID_RELOAD_MODEL:
          serviceImpl.reloadModel((io.tinymodelserver.tms.v1.ReloadModelRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ReloadModelResponse>) responseObserver);
          break;
        case METHODID_LIST_WORKERS:
          serviceImpl.listWorkers((io.tinymodelserver.tms.v1.ListWorkersRequest) request,
              (io.grpc.stub.StreamObserver<io.tinymodelserver.tms.v1.ListWorkersResponse>) responseObserver);
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
        default:
          throw new AssertionError();
      }
    }
  }

  public static final io.grpc.ServerServiceDefinition bindService(AsyncService service) {
    return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
        .addMethod(
          getReloadModelMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.ReloadModelRequest,
              io.tinymodelserver.tms.v1.ReloadModelResponse>(
                service, METHODID_RELOAD_MODEL)))
        .addMethod(
          getListWorkersMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              io.tinymodelserver.tms.v1.ListWorkersRequest,
              io.tinymodelserver.tms.v1.ListWorkersResponse>(
                service, METHODID_LIST_WORKERS)))
        .build();
  }

  private static abstract class AdminServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    AdminServiceBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return io.tinymodelserver.tms.v1.AdminServiceProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("AdminService");
    }
  }

  private static final class AdminServiceFileDescriptorSupplier
      extends AdminServiceBaseDescriptorSupplier {
    AdminServiceFileDescriptorSupplier() {}
  }

  private static final class AdminServiceMethodDescriptorSupplier
      extends AdminServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    AdminServiceMethodDescriptorSupplier(java.lang.String methodName) {
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
      synchronized (AdminServiceGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new AdminServiceFileDescriptorSupplier())
              .addMethod(getReloadModelMethod())
              .addMethod(getListWorkersMethod())
              .build();
        }
      }
    }
    return result;
  }
}
