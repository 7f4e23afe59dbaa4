package io.tinymodelserver.tms.client;

import com.google.protobuf.CodedInputStream;
import com.google.protobuf.WireFormat;
import io.grpc.Metadata;
import java.io.IOException;
import java.util.Optional;

/**
 * A worker's load as it last reported it, in the trailing metadata of every answer: the calls it
 * was running ({@code inFlight}, the reporting one included) and those waiting for one of its
 * threads ({@code queued}); {@code reload} is the number of the server's last reload ({@code
 * AdminService.ReloadModel}) the worker has done (0 before any); {@code receivedNanos} is when
 * this client read it ({@link System#nanoTime()}).
 *
 * <p>The trailer {@code tms-load-bin} holds an ORCA load report ({@code
 * xds.data.orca.v3.OrcaLoadReport}) whose {@code named_metrics} (field 8, a {@code map<string,
 * double>}) hold {@code in_flight} and {@code queued}, and {@code reload} after a reload; other
 * fields are skipped, as protobuf would.
 */
public record LoadReport(int inFlight, int queued, long reload, long receivedNanos) {
  /** The trailer that carries the report. */
  static final Metadata.Key<byte[]> KEY =
      Metadata.Key.of("tms-load-bin", Metadata.BINARY_BYTE_MARSHALLER);

  private static final int NAMED_METRICS = 8;

  /** A report of a worker that has done no reload. */
  public LoadReport(int inFlight, int queued, long receivedNanos) {
    this(inFlight, queued, 0, receivedNanos);
  }

  /** The calls ahead of a new one on the worker. */
  public int total() {
    return inFlight + queued;
  }

  /** The report in {@code trailers}, if they hold a well-formed one. */
  static Optional<LoadReport> of(Metadata trailers, long receivedNanos) {
    byte[] data = trailers == null ? null : trailers.get(KEY);
    if (data == null) {
      return Optional.empty();
    }
    try {
      double inFlight = 0;
      double queued = 0;
      double reload = 0;
      CodedInputStream report = CodedInputStream.newInstance(data);
      for (int tag = report.readTag(); tag != 0; tag = report.readTag()) {
        if (!is(tag, NAMED_METRICS, WireFormat.WIRETYPE_LENGTH_DELIMITED)) {
          report.skipField(tag);
          continue;
        }
        CodedInputStream entry = report.readBytes().newCodedInput();
        String name = "";
        double value = 0;
        for (int field = entry.readTag(); field != 0; field = entry.readTag()) {
          if (is(field, 1, WireFormat.WIRETYPE_LENGTH_DELIMITED)) {
            name = entry.readStringRequireUtf8();
          } else if (is(field, 2, WireFormat.WIRETYPE_FIXED64)) {
            value = entry.readDouble();
          } else {
            entry.skipField(field);
          }
        }
        if (name.equals("in_flight")) {
          inFlight = value;
        } else if (name.equals("queued")) {
          queued = value;
        } else if (name.equals("reload")) {
          reload = value;
        }
      }
      return Optional.of(
          new LoadReport((int) inFlight, (int) queued, (long) reload, receivedNanos));
    } catch (IOException malformed) {
      return Optional.empty();
    }
  }

  private static boolean is(int tag, int number, int wireType) {
    return WireFormat.getTagFieldNumber(tag) == number
        && WireFormat.getTagWireType(tag) == wireType;
  }
}
