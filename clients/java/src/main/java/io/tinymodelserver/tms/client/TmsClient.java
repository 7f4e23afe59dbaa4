package io.tinymodelserver.tms.client;

import io.grpc.ChannelCredentials;
import io.grpc.Deadline;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.tinymodelserver.tms.v1.GetModelInfoRequest;
import io.tinymodelserver.tms.v1.Image;
import io.tinymodelserver.tms.v1.ListModelsRequest;
import io.tinymodelserver.tms.v1.ListModelsResponse;
import io.tinymodelserver.tms.v1.ModelInfo;
import io.tinymodelserver.tms.v1.ModelServiceGrpc.ModelServiceBlockingStub;
import io.tinymodelserver.tms.v1.RunImageBatchRequest;
import io.tinymodelserver.tms.v1.RunImageRequest;
import io.tinymodelserver.tms.v1.RunImageToImageRequest;
import io.tinymodelserver.tms.v1.RunImageToImageResponse;
import io.tinymodelserver.tms.v1.RunTextBatchRequest;
import io.tinymodelserver.tms.v1.RunTextRequest;
import java.io.IOException;
import java.time.Duration;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * A client of one TMS server: every worker process behind its port, one connection each.
 *
 * <pre>{@code
 * try (TmsClient client =
 *     TmsClient.builder("localhost:50051").timeout(Duration.ofSeconds(10)).build()) {
 *   String faces = client.runImage("face", image, "{}"); // the model's JSON result
 * }
 * }</pre>
 *
 * <p>{@link Builder#build()} connects (waiting up to the connect timeout for the server to answer,
 * but failing at once, UNAVAILABLE "connection refused at TARGET: is tms-server running?", where
 * nothing listens, unless {@link Builder#waitForServer}, and UNAVAILABLE "no TMS server answered
 * at TARGET within ...; is it running, ...?" where none answers in time; a worker that does not
 * answer, a stalled one, costs it about a second) and
 * finds the workers. Each call
 * goes to a worker that serves its model, the one the {@link Balancer} picks (least-loaded by
 * default). Each call has a deadline ({@link Builder#timeout}), retries included, and waits for
 * a search for workers under way (the background's may take the whole connect timeout on a server
 * that is down) no longer than that;
 * a call that fails with UNAVAILABLE or CANCELLED (its worker went away, or a stopping server
 * cancelled it), or because its connection broke under it, is retried on another worker, and that
 * worker is dropped.
 * A call whose error carries a {@code google.rpc.RetryInfo} (QUEUE_FULL: its worker is busy;
 * DRAINING: it is stopping) is retried on another worker after the delay it names, unless the
 * deadline would pass first. A background thread looks for missing workers (a restarted one, say),
 * and, when an answer says its worker has done a reload of the server ({@code
 * AdminService.ReloadModel}, which may change which workers serve a model), asks that server's
 * workers again which models they serve, so that calls follow the model.
 * Other failures raise {@link TmsException} at once.
 */
public final class TmsClient implements AutoCloseable {
  private static final Logger LOG = Logger.getLogger(TmsClient.class.getName());
  private static final Set<Status.Code> RETRIED =
      Set.of(Status.Code.UNAVAILABLE, Status.Code.CANCELLED);

  /**
   * The shortest timeout that means no deadline (10^8 s, over three years), as in the Python
   * client; a connect timeout must be shorter.
   */
  static final Duration NO_DEADLINE = Duration.ofSeconds(100_000_000);

  private final Builder options;
  private final WorkerPool pool;
  private final ScheduledExecutorService refresher;

  private TmsClient(Builder options) {
    this.options = options;
    this.refresher =
        Executors.newSingleThreadScheduledExecutor(
            task -> {
              Thread thread = new Thread(task, "tms-client-refresh");
              thread.setDaemon(true);
              return thread;
            });
    this.pool =
        new WorkerPool(
            options.target,
            this::newChannel,
            options.connectTimeout,
            options.waitForServer,
            options.credentials instanceof InsecureChannelCredentials,
            options.balancer,
            refresher);
  }

  /**
   * A builder for a client of {@code target} ({@code host:port}, or any gRPC target); one string
   * of several addresses ({@code "h1:50051,h2:50051"}) is an IllegalArgumentException at once:
   * give one, or a {@code dns:///} name that resolves to them all.
   */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  private ManagedChannel newChannel() {
    ManagedChannelBuilder<?> builder =
        Grpc.newChannelBuilder(options.target, options.credentials)
            .maxInboundMessageSize(options.maxMessageBytes)
            .idleTimeout(30, TimeUnit.DAYS); // an idle channel would drop its worker
    if (options.token != null) {
      builder.intercept(new BearerToken(options.token));
    }
    return builder.build();
  }

  private void start() {
    pool.discover(connectDeadline(), true);
    long every = options.refreshInterval.toMillis();
    refresher.scheduleWithFixedDelay(this::refresh, every, every, TimeUnit.MILLISECONDS);
  }

  /** One round of the background search: missing workers, then the models of reloaded ones. */
  private void refresh() {
    try {
      if (pool.missing()) {
        pool.discover(connectDeadline(), false);
      }
    } catch (RuntimeException error) {
      LOG.log(Level.FINE, "looking for missing workers failed", error);
    }
    try {
      pool.follow();
    } catch (RuntimeException error) { // an exception would end the rounds
      LOG.log(Level.WARNING, "asking workers for their models failed", error);
    }
  }

  /** Run an image model on one image; returns its JSON result. {@code argsJson} may be empty. */
  public String runImage(String model, Image image, String argsJson) {
    RunImageRequest request =
        RunImageRequest.newBuilder()
            .setModel(model)
            .setImage(image)
            .setArgsJson(orEmpty(argsJson))
            .build();
    return call(model, stub -> stub.runImage(request).getResultJson());
  }

  /**
   * Run an image model on several images, {@code argsJson} shared by all; returns one JSON result
   * per image, in order.
   */
  public List<String> runImageBatch(String model, List<Image> images, String argsJson) {
    RunImageBatchRequest request =
        RunImageBatchRequest.newBuilder()
            .setModel(model)
            .addAllImages(images)
            .setArgsJson(orEmpty(argsJson))
            .build();
    return call(model, stub -> stub.runImageBatch(request).getResultsJsonList());
  }

  /** What an image-to-image model returned: its images, and its JSON result ("null": none). */
  public record ImageToImage(List<Image> images, String resultJson) {
    public ImageToImage {
      images = List.copyOf(images);
    }
  }

  /** Run an image-to-image model on one or more images; its images come back raw. */
  public ImageToImage runImageToImage(String model, List<Image> images, String argsJson) {
    RunImageToImageRequest request =
        RunImageToImageRequest.newBuilder()
            .setModel(model)
            .addAllImages(images)
            .setArgsJson(orEmpty(argsJson))
            .build();
    RunImageToImageResponse response = call(model, stub -> stub.runImageToImage(request));
    return new ImageToImage(response.getImagesList(), response.getResultJson());
  }

  /**
   * One frame's answer in a {@link #runImageStream} stream: its index ({@code frameId}, 0, 1, ...)
   * and either the model's JSON result or, when that frame failed alone, its error.
   */
  public record FrameResult(long frameId, String resultJson, TmsException error) {}

  /**
   * Run an image model on a sequence of frames (a video) over one RunImageStream call; returns
   * their results, one per frame, in order, as they come. {@code argsJson} (may be empty) are the
   * stream's. At most {@code window} (at least 1) frames are in flight: the next is taken from
   * {@code frames}, on a thread of the stream's own, only when there is room; when {@code frames}
   * throws (or yields null: IllegalArgumentException) the frames sent are answered, then the
   * stream throws that. The whole stream goes to one worker, whose model may keep state across its
   * frames, and counts as one call in flight there; it is not retried. {@code timeout} bounds the
   * whole stream (null, or 10^8 s or more: no bound; the client's per-call timeout does not apply,
   * since a video may run for hours). Close the returned stream to end it early:
   *
   * <pre>{@code
   * try (FrameStream results = client.runImageStream("track", frames, "{}", 4, null)) {
   *   results.forEachRemaining(result -> show(result.frameId(), result.resultJson()));
   * }
   * }</pre>
   */
  public FrameStream runImageStream(
      String model, Iterator<Image> frames, String argsJson, int window, Duration timeout) {
    if (window < 1) {
      throw new IllegalArgumentException("window must be at least 1, not " + window);
    }
    Deadline found = connectDeadline();
    Deadline deadline = deadlineAfter(timeout);
    return new FrameStream(
        pool,
        found,
        deadline,
        model,
        Objects.requireNonNull(frames, "frames"),
        orEmpty(argsJson),
        window);
  }

  /** {@link #runImageStream(String, Iterator, String, int, Duration)}: 4 frames, no timeout. */
  public FrameStream runImageStream(String model, Iterator<Image> frames, String argsJson) {
    return runImageStream(model, frames, argsJson, 4, null);
  }

  /** Run a text model on one text; returns its JSON result. {@code argsJson} may be empty. */
  public String runText(String model, String text, String argsJson) {
    RunTextRequest request =
        RunTextRequest.newBuilder()
            .setModel(model)
            .setText(text)
            .setArgsJson(orEmpty(argsJson))
            .build();
    return call(model, stub -> stub.runText(request).getResultJson());
  }

  /**
   * Run a text model on several texts, {@code argsJson} shared by all; returns one JSON result per
   * text, in order.
   */
  public List<String> runTextBatch(String model, List<String> texts, String argsJson) {
    RunTextBatchRequest request =
        RunTextBatchRequest.newBuilder()
            .setModel(model)
            .addAllTexts(texts)
            .setArgsJson(orEmpty(argsJson))
            .build();
    return call(model, stub -> stub.runTextBatch(request).getResultsJsonList());
  }

  /** The models the server has loaded, sorted by name. */
  public List<ModelInfo> listModels() {
    return listing().getModelsList();
  }

  /**
   * The models the server found but failed to load, by name, and why (the exception's type and
   * message; empty when all loaded). Their calls fail FAILED_PRECONDITION, reason MODEL_NOT_LOADED.
   */
  public Map<String, String> failedModels() {
    Map<String, String> failed = new TreeMap<>();
    listing().getFailedList().forEach(model -> failed.put(model.getName(), model.getReason()));
    return failed;
  }

  private ListModelsResponse listing() {
    return call("", stub -> stub.listModels(ListModelsRequest.getDefaultInstance()));
  }

  /**
   * The standard gRPC health check ({@code grpc.health.v1.Health/Check}) of {@code service} ("" for
   * the whole server, or a model's name), asked of a worker that has that model, as a call for it
   * would go (a model placed on some workers is NOT_SERVING on the others): {@code "SERVING"},
   * {@code "NOT_SERVING"}, or {@code "SERVICE_UNKNOWN"} for a service the server does not know.
   * It needs no token.
   */
  public String health(String service) {
    try {
      return call(service, stub -> Health.check(stub, service));
    } catch (TmsException error) {
      if (error.code() == Status.Code.NOT_FOUND) {
        return "SERVICE_UNKNOWN";
      }
      throw error;
    }
  }

  /** One model's description; NOT_FOUND when the server has no such model. */
  public ModelInfo getModelInfo(String model) {
    GetModelInfoRequest request = GetModelInfoRequest.newBuilder().setModel(model).build();
    return call(model, stub -> stub.getModelInfo(request).getInfo());
  }

  /** The worker processes this client holds a connection to, now. */
  public List<Worker> workers() {
    return pool.workers();
  }

  /** Make {@code rpc} on a worker that serves {@code model}, retried as the class says. */
  private <T> T call(String model, Function<ModelServiceBlockingStub, T> rpc) {
    Deadline deadline = deadlineAfter(options.timeout); // null: none
    TmsException last = null;
    for (int attempt = 0; attempt < options.attempts; attempt++) {
      WorkerPool.Member member = pool.pick(deadline == null ? connectDeadline() : deadline, model);
      StatusRuntimeException error;
      member.begin();
      long began = System.nanoTime();
      try {
        return rpc.apply(member.stub().withDeadline(deadline));
      } catch (StatusRuntimeException failed) {
        error = failed;
      } finally {
        member.recordLatency(began); // a call that timed out counts, too
        member.end();
      }
      pool.checkOpen(); // close() ended it: not retried
      last = TmsException.from(error);
      boolean gone = RETRIED.contains(error.getStatus().getCode()) || connectionLost(error);
      Optional<Duration> delay = last.retryDelay();
      if (!(gone || delay.isPresent()) || (deadline != null && deadline.isExpired())) {
        break;
      }
      if (gone) {
        pool.drop(member);
      }
      if (delay.isPresent() && !pause(delay.get(), deadline)) {
        break;
      }
    }
    throw last;
  }

  /** Sleep for {@code delay}; false (at once) when the deadline (null: none) would pass first. */
  private static boolean pause(Duration delay, Deadline deadline) {
    long nanos = delay.toNanos();
    if (nanos <= 0) {
      return true;
    }
    if (deadline != null && deadline.timeRemaining(TimeUnit.NANOSECONDS) <= nanos) {
      return false;
    }
    try {
      TimeUnit.NANOSECONDS.sleep(nanos);
      return true;
    } catch (InterruptedException interrupted) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  /**
   * Whether the status was made on this side because the connection broke under the call (grpc-java
   * reports a write on a closed Netty channel as UNKNOWN "channel closed"): its cause is a local
   * I/O error, which a status sent by the server never has.
   */
  static boolean connectionLost(StatusRuntimeException error) {
    for (Throwable cause = error.getStatus().getCause(); cause != null; cause = cause.getCause()) {
      if (cause instanceof IOException) {
        return true;
      }
    }
    return false;
  }

  /** The deadline {@code timeout} from now; null (none) for null or {@link #NO_DEADLINE} on. */
  static Deadline deadlineAfter(Duration timeout) {
    return timeout == null || timeout.compareTo(NO_DEADLINE) >= 0
        ? null
        : Deadline.after(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  private Deadline connectDeadline() {
    return Deadline.after(options.connectTimeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  private static String orEmpty(String argsJson) {
    return argsJson == null ? "" : argsJson;
  }

  /**
   * Close every channel and stop looking for workers. The calls and streams in flight end at
   * once, and calls and streams made after it fail at once, without retry: all with
   * FAILED_PRECONDITION, "this client is closed; make a new one to call again".
   */
  @Override
  public void close() {
    refresher.shutdownNow();
    pool.close();
  }

  @Override
  public String toString() {
    return "TmsClient(" + options + ", " + pool + ")";
  }

  /** The settings of a client; every one has a bounded default. */
  public static final class Builder {
    private final String target;
    private Duration timeout = Duration.ofSeconds(30);
    private Duration connectTimeout = Duration.ofSeconds(10);
    private boolean waitForServer;
    private Duration refreshInterval = Duration.ofSeconds(1);
    private int attempts = 5;
    private int maxMessageBytes = 64 * 1024 * 1024;
    private String token;
    private ChannelCredentials credentials = InsecureChannelCredentials.create();
    private Balancer balancer = Balancer.leastLoaded();

    private Builder(String target) {
      if (Objects.requireNonNull(target, "target").contains(",")) {
        // grpc-java refuses "h1:p1,h2:p2" only as "Invalid DNS name", which names no fix
        throw new IllegalArgumentException(
            "target \"" + target + "\" is several addresses in one string; give one"
                + " 'host:port', or 'dns:///name:port' for every address a name resolves to");
      }
      this.target = target;
    }

    /**
     * Each call's deadline, retries included (default 30 s; 10^8 s or more, over three years: no
     * deadline).
     */
    public Builder timeout(Duration timeout) {
      this.timeout = positive(timeout, "timeout");
      return this;
    }

    /**
     * How long {@link #build()} and discovery wait for the server (default 10 s, under 10^8 s, else
     * IllegalArgumentException); {@link #build()} waits for none where the connection is refused
     * (nothing listens there), unless {@link #waitForServer}.
     */
    public Builder connectTimeout(Duration connectTimeout) {
      this.connectTimeout = bounded(connectTimeout, "connectTimeout");
      return this;
    }

    /**
     * Whether {@link #build()} also waits, up to the connect timeout, where the connection is
     * refused: for a server still starting (tms-server listens only once its workers have loaded
     * their models) or restarting, a refused connection tried again until the connect timeout
     * (default false: it fails at once, UNAVAILABLE).
     */
    public Builder waitForServer(boolean waitForServer) {
      this.waitForServer = waitForServer;
      return this;
    }

    /**
     * How often missing workers are looked for, and workers that had not yet done their server's
     * last reload are asked again which models they serve (default 1 s, under 10^8 s).
     */
    public Builder refreshInterval(Duration refreshInterval) {
      this.refreshInterval = bounded(refreshInterval, "refreshInterval");
      return this;
    }

    /** Attempts per call, the first included, each on another worker (default 5, 1 to 100). */
    public Builder attempts(int attempts) {
      if (attempts < 1 || attempts > 100) {
        throw new IllegalArgumentException("attempts must be 1 to 100, not " + attempts);
      }
      this.attempts = attempts;
      return this;
    }

    /** The bearer token sent on every call (the server's {@code --tokens-file}). */
    public Builder token(String token) {
      this.token = Objects.requireNonNull(token, "token");
      return this;
    }

    /**
     * Which worker gets each call (default {@link Balancer#leastLoaded()}; {@link
     * Balancer#roundRobin()}, or a balancer of your own).
     */
    public Builder balancer(Balancer balancer) {
      this.balancer = Objects.requireNonNull(balancer, "balancer");
      return this;
    }

    /** Channel credentials, for TLS (default: plaintext). */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = Objects.requireNonNull(credentials, "credentials");
      return this;
    }

    /** Connect, find every worker process and return the client; {@link TmsException} if not. */
    public TmsClient build() {
      TmsClient client = new TmsClient(copy());
      try {
        client.start();
      } catch (RuntimeException error) {
        client.close();
        throw error;
      }
      return client;
    }

    private Builder copy() {
      Builder copy = new Builder(target);
      copy.timeout = timeout;
      copy.connectTimeout = connectTimeout;
      copy.waitForServer = waitForServer;
      copy.refreshInterval = refreshInterval;
      copy.attempts = attempts;
      copy.maxMessageBytes = maxMessageBytes;
      copy.token = token;
      copy.credentials = credentials;
      copy.balancer = balancer;
      return copy;
    }

    private static Duration positive(Duration value, String name) {
      if (value == null || value.isNegative() || value.isZero()) {
        throw new IllegalArgumentException(name + " must be positive, not " + value);
      }
      return value;
    }

    private static Duration bounded(Duration value, String name) {
      if (positive(value, name).compareTo(NO_DEADLINE) >= 0) {
        throw new IllegalArgumentException(name + " must be under 10^8 s, not " + value);
      }
      return value;
    }

    @Override
    public String toString() {
      return "target=" + target + ", timeout=" + timeout + ", connectTimeout=" + connectTimeout
          + ", waitForServer=" + waitForServer + ", attempts=" + attempts + ", balancer=" + balancer
          + ", token=" + (token == null ? "none" : "***");
    }
  }
}
