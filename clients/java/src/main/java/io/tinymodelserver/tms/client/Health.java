package io.tinymodelserver.tms.client;

import com.google.protobuf.CodedInputStream;
import com.google.protobuf.CodedOutputStream;
import com.google.protobuf.WireFormat;
import io.grpc.MethodDescriptor;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.ClientCalls;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.List;

/**
 * The standard gRPC health check, {@code grpc.health.v1.Health/Check}, written by hand: its two
 * messages are a string and an enum ({@code HealthCheckRequest {string service = 1}}, {@code
 * HealthCheckResponse {ServingStatus status = 1}}), which spares a dependency on grpc-services.
 */
final class Health {
  private static final List<String> STATUS =
      List.of("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN");

  private static final MethodDescriptor.Marshaller<byte[]> BYTES =
      new MethodDescriptor.Marshaller<>() {
        @Override
        public InputStream stream(byte[] value) {
          return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
          try {
            return stream.readAllBytes();
          } catch (IOException error) {
            throw new UncheckedIOException(error);
          }
        }
      };

  private static final MethodDescriptor<byte[], byte[]> CHECK =
      MethodDescriptor.<byte[], byte[]>newBuilder()
          .setType(MethodDescriptor.MethodType.UNARY)
          .setFullMethodName("grpc.health.v1.Health/Check")
          .setRequestMarshaller(BYTES)
          .setResponseMarshaller(BYTES)
          .build();

  private Health() {}

  /** The status the worker {@code stub} reaches gives {@code service}, by name. */
  static String check(AbstractStub<?> stub, String service) {
    try {
      ByteArrayOutputStream request = new ByteArrayOutputStream();
      CodedOutputStream out = CodedOutputStream.newInstance(request);
      if (!service.isEmpty()) {
        out.writeString(1, service);
      }
      out.flush();
      byte[] reply =
          ClientCalls.blockingUnaryCall(
              stub.getChannel(), CHECK, stub.getCallOptions(), request.toByteArray());
      int status = 0;
      CodedInputStream in = CodedInputStream.newInstance(reply);
      for (int tag = in.readTag(); tag != 0; tag = in.readTag()) {
        if (tag == (1 << 3 | WireFormat.WIRETYPE_VARINT)) {
          status = in.readEnum();
        } else {
          in.skipField(tag);
        }
      }
      return status >= 0 && status < STATUS.size() ? STATUS.get(status) : "UNKNOWN";
    } catch (IOException malformed) {
      throw new UncheckedIOException(malformed);
    }
  }
}
