package io.tinymodelserver.tms.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.CodedOutputStream;
import com.google.protobuf.WireFormat;
import io.grpc.Deadline;
import io.grpc.ForwardingServerCall.SimpleForwardingServerCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.InsecureServerCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import io.tinymodelserver.tms.v1.GetWorkerInfoRequest;
import io.tinymodelserver.tms.v1.GetWorkerInfoResponse;
import io.tinymodelserver.tms.v1.ModelServiceGrpc;
import io.tinymodelserver.tms.v1.RunTextRequest;
import io.tinymodelserver.tms.v1.RunTextResponse;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * How a {@link WorkerPool} follows a reload, against two fake worker processes of one server (each
 * a gRPC server of its own on loopback; the pool's channels reach them in turn): which models each
 * serves, the reload it has done, and load reports carrying it in every answer's trailers.
 */
class WorkerPoolTest {
  /** One worker process of the server "fake": what its GetWorkerInfo says, and how often. */
  static final class FakeWorker extends ModelServiceGrpc.ModelServiceImplBase {
    final long pid;
    final Server server;
    final AtomicInteger asked = new AtomicInteger(); // GetWorkerInfo calls answered
    volatile List<String> models;
    volatile long reload;

    FakeWorker(long pid, List<String> models) throws IOException {
      this.pid = pid;
      this.models = models;
      this.server =
          Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create())
              .addService(ServerInterceptors.intercept(this, reporting()))
              .build()
              .start();
    }

    /** Now serves {@code models}, having done reload number {@code reload}. */
    void reloaded(long reload, List<String> models) {
      this.models = models;
      this.reload = reload;
    }

    @Override
    public void getWorkerInfo(
        GetWorkerInfoRequest request, StreamObserver<GetWorkerInfoResponse> answer) {
      asked.incrementAndGet();
      answer.onNext(
          GetWorkerInfoResponse.newBuilder()
              .setInstanceId("fake")
              .setPid(pid)
              .setWorkerIndex((int) pid - 1)
              .setWorkerCount(2)
              .addAllModels(models)
              .setReload(reload)
              .build());
      answer.onCompleted();
    }

    @Override
    public void runText(RunTextRequest request, StreamObserver<RunTextResponse> answer) {
      answer.onNext(RunTextResponse.newBuilder().setResultJson("{\"pid\": " + pid + "}").build());
      answer.onCompleted();
    }

    /** Puts the worker's load report, with its reload once above 0, in every answer's trailers. */
    private ServerInterceptor reporting() {
      return new ServerInterceptor() {
        @Override
        public <Q, R> ServerCall.Listener<Q> interceptCall(
            ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
          return next.startCall(
              new SimpleForwardingServerCall<>(call) {
                @Override
                public void close(Status status, Metadata trailers) {
                  trailers.put(LoadReport.KEY, orca(1, 0, reload));
                  super.close(status, trailers);
                }
              },
              headers);
        }
      };
    }
  }

  /** An ORCA load report whose named metrics hold these (reload only when above 0). */
  static byte[] orca(double inFlight, double queued, double reload) {
    Map<String, Double> metrics = new LinkedHashMap<>();
    metrics.put("in_flight", inFlight);
    metrics.put("queued", queued);
    if (reload > 0) {
      metrics.put("reload", reload);
    }
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    try {
      CodedOutputStream out = CodedOutputStream.newInstance(bytes);
      for (Map.Entry<String, Double> metric : metrics.entrySet()) {
        out.writeTag(8, WireFormat.WIRETYPE_LENGTH_DELIMITED); // named_metrics, a map entry
        out.writeUInt32NoTag(
            CodedOutputStream.computeStringSize(1, metric.getKey())
                + CodedOutputStream.computeDoubleSize(2, metric.getValue()));
        out.writeString(1, metric.getKey());
        out.writeDouble(2, metric.getValue());
      }
      out.flush();
    } catch (IOException impossible) {
      throw new UncheckedIOException(impossible);
    }
    return bytes.toByteArray();
  }

  private final ExecutorService background = Executors.newSingleThreadExecutor();
  private FakeWorker one;
  private FakeWorker two;
  private WorkerPool pool;

  @BeforeEach
  void start() throws IOException {
    one = new FakeWorker(1, List.of("alpha", "late")); // "late" failed to load on two
    two = new FakeWorker(2, List.of("alpha"));
  }

  @AfterEach
  void stop() {
    if (pool != null) {
      pool.close();
    }
    background.shutdownNow();
    one.server.shutdownNow();
    two.server.shutdownNow();
  }

  /** A pool holding both workers (its channels reach one, then two, in turn). */
  private WorkerPool both() {
    AtomicInteger turn = new AtomicInteger();
    List<FakeWorker> workers = List.of(one, two);
    pool =
        new WorkerPool(
            "fake",
            () -> {
              int port = workers.get(turn.getAndIncrement() % 2).server.getPort();
              return channel(port);
            },
            Duration.ofSeconds(5),
            false,
            true,
            Balancer.roundRobin(),
            background);
    pool.discover(Deadline.after(5, TimeUnit.SECONDS), true);
    assertEquals(2, pool.workers().size());
    return pool;
  }

  private static ManagedChannel channel(int port) {
    return Grpc.newChannelBuilderForAddress("127.0.0.1", port, InsecureChannelCredentials.create())
        .build();
  }

  /** The pids of the workers {@code calls} calls for {@code model} go to. */
  private Set<Long> picked(String model, int calls) {
    Set<Long> pids = new TreeSet<>();
    for (int i = 0; i < calls; i++) {
      pids.add(pool.pick(Deadline.after(5, TimeUnit.SECONDS), model).worker().pid());
    }
    return pids;
  }

  /** Make a call on worker {@code pid}, whose answer carries its load report. */
  private void call(long pid) {
    WorkerPool.Member member = pool.pick(Deadline.after(5, TimeUnit.SECONDS), "late");
    assertEquals(pid, member.worker().pid());
    member.stub().runText(RunTextRequest.newBuilder().setModel("late").setText("x").build());
  }

  /** Wait for the background executor to run what it was given so far, then {@code task}. */
  private void onBackground(Runnable task) throws InterruptedException, ExecutionException {
    background.submit(task).get();
  }

  private static void waitFor(BooleanSupplier condition) throws InterruptedException {
    long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
    while (!condition.getAsBoolean() && System.nanoTime() < end) {
      Thread.sleep(10);
    }
    assertTrue(condition.getAsBoolean());
  }

  @Test
  void anAnswerSayingAReloadMakesThePoolAskEveryWorkerOfItsServer() throws Exception {
    both();
    assertEquals(Set.of(1L), picked("late", 4));
    one.reloaded(1, List.of("alpha", "late"));
    two.reloaded(1, List.of("alpha", "late"));
    call(1); // no call goes to two, which is asked all the same
    waitFor(() -> pool.workers().stream().allMatch(worker -> worker.has("late")));
    assertEquals(Set.of(1L, 2L), picked("late", 4));
    onBackground(() -> {});
    assertEquals(List.of(2, 2), List.of(one.asked.get(), two.asked.get()));
    onBackground(pool::follow); // a round of the background search: nobody left to ask
    assertEquals(List.of(2, 2), List.of(one.asked.get(), two.asked.get()));
  }

  @Test
  void aWorkerThatHasNotDoneTheLastReloadIsAskedAgain() throws Exception {
    both();
    one.reloaded(1, List.of("alpha", "late"));
    call(1);
    waitFor(() -> two.asked.get() == 2);
    onBackground(() -> {});
    assertEquals(Set.of(1L), picked("late", 4)); // two says it has not done reload 1 yet
    two.reloaded(1, List.of("alpha", "late"));
    onBackground(pool::follow); // the next round asks it again
    assertEquals(3, two.asked.get());
    assertEquals(Set.of(1L, 2L), picked("late", 4));
    onBackground(pool::follow);
    assertEquals(List.of(2, 3), List.of(one.asked.get(), two.asked.get()));
  }

  @Test
  void aWorkerFoundAfterAReloadIsNotAskedAgain() throws Exception {
    one.reloaded(3, List.of("alpha", "late"));
    two.reloaded(3, List.of("alpha", "late"));
    both();
    call(1);
    call(2);
    onBackground(pool::follow);
    assertEquals(List.of(1, 1), List.of(one.asked.get(), two.asked.get()));
    assertEquals(Set.of(1L, 2L), picked("late", 4));
  }

  @Test
  void aLoadReportCarriesTheReloadOnceAboveZero() {
    Metadata trailers = new Metadata();
    trailers.put(LoadReport.KEY, orca(3, 2, 0));
    assertEquals(new LoadReport(3, 2, 0, 7), LoadReport.of(trailers, 7).orElseThrow());
    trailers.put(LoadReport.KEY, orca(3, 2, 5));
    assertEquals(new LoadReport(3, 2, 5, 7), LoadReport.of(trailers, 7).orElseThrow());
  }
}
