package io.tinymodelserver.tms.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import io.tinymodelserver.tms.v1.GetWorkerInfoRequest;
import io.tinymodelserver.tms.v1.GetWorkerInfoResponse;
import io.tinymodelserver.tms.v1.Image;
import io.tinymodelserver.tms.v1.ModelServiceGrpc;
import io.tinymodelserver.tms.v1.RunImageStreamRequest;
import io.tinymodelserver.tms.v1.RunImageStreamResponse;
import io.tinymodelserver.tms.v1.RunTextRequest;
import io.tinymodelserver.tms.v1.RunTextResponse;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * A {@link TmsClient} against a fake worker process (a gRPC server on loopback) that answers each
 * frame of a stream at once: its streams and its timeouts; and its start where no server answers.
 */
class TmsClientTest {
  static final String CLOSED =
      "FAILED_PRECONDITION: this client is closed; make a new one to call again";

  /**
   * The one worker process of a server: it answers each frame at once, and its RunText says
   * whether the call had a deadline.
   */
  static final class Answering extends ModelServiceGrpc.ModelServiceImplBase {
    final Server server;

    Answering() throws IOException {
      server =
          Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create())
              .addService(this)
              .build()
              .start();
    }

    @Override
    public void getWorkerInfo(
        GetWorkerInfoRequest request, StreamObserver<GetWorkerInfoResponse> answer) {
      answer.onNext(
          GetWorkerInfoResponse.newBuilder()
              .setInstanceId("fake")
              .setPid(1)
              .setWorkerCount(1)
              .addModels("any")
              .build());
      answer.onCompleted();
    }

    @Override
    public StreamObserver<RunImageStreamRequest> runImageStream(
        StreamObserver<RunImageStreamResponse> answers) {
      return new StreamObserver<>() {
        @Override
        public void onNext(RunImageStreamRequest frame) {
          answers.onNext(
              RunImageStreamResponse.newBuilder()
                  .setFrameId(frame.getFrameId())
                  .setResultJson("{}")
                  .build());
        }

        @Override
        public void onError(Throwable error) {}

        @Override
        public void onCompleted() {
          answers.onCompleted();
        }
      };
    }

    @Override
    public void runText(RunTextRequest request, StreamObserver<RunTextResponse> answer) {
      boolean bounded = Context.current().getDeadline() != null;
      answer.onNext(RunTextResponse.newBuilder().setResultJson("" + bounded).build());
      answer.onCompleted();
    }
  }

  private Answering worker;
  private TmsClient client;
  private final CountDownLatch release = new CountDownLatch(1); // lets a held iterator go on

  @BeforeEach
  void start() throws IOException {
    worker = new Answering();
  }

  @AfterEach
  void stop() {
    release.countDown();
    if (client != null) {
      client.close();
    }
    worker.server.shutdownNow();
  }

  private TmsClient.Builder builder() {
    return TmsClient.builder("127.0.0.1:" + worker.server.getPort())
        .connectTimeout(Duration.ofSeconds(5));
  }

  private TmsClient client() {
    return client = builder().build();
  }

  /**
   * Frames 0, 1, ... up to {@code count}, each after {@code pauseMillis} but the first; {@code
   * last}, when not null, is what frame {@code count} does (throws, yields null); a pause of -1
   * holds every frame but the first until {@link #release}.
   */
  private Iterator<Image> frames(int count, long pauseMillis, Runnable last) {
    return new Iterator<>() {
      int at;

      @Override
      public boolean hasNext() {
        return at < count || (at == count && last != null);
      }

      @Override
      public Image next() {
        if (at++ > 0) {
          try {
            if (pauseMillis < 0) {
              release.await();
            } else {
              Thread.sleep(pauseMillis);
            }
          } catch (InterruptedException interrupted) {
            throw new IllegalStateException(interrupted);
          }
        }
        if (at > count) {
          last.run();
          return null;
        }
        return Image.getDefaultInstance();
      }
    };
  }

  /** The ids of the frames answered, until the stream ends (or throws). */
  private static List<Long> drain(FrameStream results, List<Long> answered) {
    results.forEachRemaining(result -> answered.add(result.frameId()));
    return answered;
  }

  @Test
  void anIteratorThatThrowsHasItsFramesAnsweredFirst() {
    List<Long> answered = new ArrayList<>();
    FrameStream results =
        client()
            .runImageStream(
                "any",
                frames(3, 0, () -> {
                  throw new IllegalStateException("camera unplugged");
                }),
                "{}",
                4,
                null);
    IllegalStateException thrown =
        assertThrows(IllegalStateException.class, () -> drain(results, answered));
    assertEquals("camera unplugged", thrown.getMessage());
    assertEquals(List.of(0L, 1L, 2L), answered);
    assertThrows(IllegalStateException.class, results::hasNext); // and again
  }

  @Test
  void aNullFrameIsAnIllegalArgumentAfterTheFramesBeforeIt() {
    List<Long> answered = new ArrayList<>();
    FrameStream results = client().runImageStream("any", frames(3, 0, () -> {}), "{}", 4, null);
    IllegalArgumentException thrown =
        assertThrows(IllegalArgumentException.class, () -> drain(results, answered));
    assertEquals("frame 3 of the stream is null", thrown.getMessage());
    assertEquals(List.of(0L, 1L, 2L), answered);
  }

  @Test
  void anAnswerIsThereWhileTheIteratorReadsTheNextFrames() {
    try (FrameStream results =
        client().runImageStream("any", frames(3, 1000, null), "{}", 4, null)) {
      long began = System.nanoTime();
      assertEquals(0, results.next().frameId());
      long millis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - began);
      assertTrue(millis < 700, millis + " ms: it waited for frames 1 and 2");
    }
  }

  @Test
  void closingTheClientEndsAStreamWhoseIteratorIsBetweenFrames() {
    TmsClient closing = client();
    FrameStream results = closing.runImageStream("any", frames(3, -1, null), "{}", 1, null);
    assertEquals(0, results.next().frameId());
    new Thread(
            () -> {
              try {
                Thread.sleep(300);
              } catch (InterruptedException interrupted) {
                return;
              }
              closing.close();
            })
        .start();
    TmsException thrown =
        assertTimeoutPreemptively(
            Duration.ofSeconds(2), () -> assertThrows(TmsException.class, results::hasNext));
    assertEquals(CLOSED, thrown.getMessage());
    release.countDown(); // the iterator yields its frame to a stream that is over: nothing more
    assertThrows(TmsException.class, results::hasNext);
  }

  @Test
  void aTimeoutOfAHundredMillionSecondsOrMoreIsNone() {
    for (Duration timeout :
        List.of(
            Duration.ofSeconds(100_000_000),
            Duration.ofSeconds(10_000_000_000L),
            Duration.ofSeconds(Long.MAX_VALUE))) {
      try (TmsClient unbounded = builder().timeout(timeout).build()) {
        assertEquals("false", unbounded.runText("any", "x", "")); // no deadline was sent
        try (FrameStream results =
            unbounded.runImageStream("any", frames(2, 0, null), "{}", 4, timeout)) {
          assertEquals(List.of(0L, 1L), drain(results, new ArrayList<>()));
        }
      }
    }
    try (TmsClient bounded = builder().timeout(Duration.ofSeconds(99_999_999)).build()) {
      assertEquals("true", bounded.runText("any", "x", ""));
    }
    for (Duration connect :
        List.of(Duration.ofSeconds(100_000_000), Duration.ofSeconds(Long.MAX_VALUE))) {
      IllegalArgumentException refused =
          assertThrows(IllegalArgumentException.class, () -> builder().connectTimeout(connect));
      assertEquals("connectTimeout must be under 10^8 s, not " + connect, refused.getMessage());
    }
  }

  /** grpc-java refused "h1:p1,h2:p2" only as "Invalid DNS name: ...", naming no fix. */
  @Test
  void severalAddressesInOneTargetAreRefusedAtOnce() {
    for (String target :
        List.of("127.0.0.1:50051,127.0.0.1:50052", "dns:///h1:50051,h2:50051")) {
      IllegalArgumentException refused =
          assertThrows(IllegalArgumentException.class, () -> TmsClient.builder(target));
      assertEquals(
          "target \"" + target + "\" is several addresses in one string; give one 'host:port',"
              + " or 'dns:///name:port' for every address a name resolves to",
          refused.getMessage());
    }
  }

  @Test
  void aStartWhereNoServerAnswersSaysSoInOneLine() throws IOException {
    String hint =
        "s; is it running, is that its gRPC port (not its --http-port), and does it serve TLS"
            + " (then pass .credentials(...))?";
    try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
      String target = "127.0.0.1:" + silent.getLocalPort(); // accepts, never answers
      TmsException thrown =
          assertThrows(
              TmsException.class,
              () -> TmsClient.builder(target).connectTimeout(Duration.ofMillis(1500)).build());
      assertEquals(Status.Code.UNAVAILABLE, thrown.code());
      assertEquals("no TMS server answered at " + target + " within 1.5" + hint, thrown.details());
    }
    String refused = "127.0.0.1:" + freePort();
    TmsException waited =
        assertThrows(
            TmsException.class,
            () ->
                TmsClient.builder(refused)
                    .connectTimeout(Duration.ofSeconds(1))
                    .waitForServer(true)
                    .build());
    assertEquals(Status.Code.UNAVAILABLE, waited.code());
    assertEquals("no TMS server answered at " + refused + " within 1" + hint, waited.details());
    assertFalse(waited.getMessage().contains("\n"));
  }

  private static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return socket.getLocalPort();
    }
  }
}
