package io.tinymodelserver.tms.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.ConnectivityState;
import io.grpc.Deadline;
import io.grpc.ForwardingClientCall.SimpleForwardingClientCall;
import io.grpc.ForwardingClientCallListener.SimpleForwardingClientCallListener;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.tinymodelserver.tms.v1.GetWorkerInfoRequest;
import io.tinymodelserver.tms.v1.GetWorkerInfoResponse;
import io.tinymodelserver.tms.v1.ModelServiceGrpc;
import io.tinymodelserver.tms.v1.ModelServiceGrpc.ModelServiceBlockingStub;
import io.tinymodelserver.tms.v1.ModelServiceGrpc.ModelServiceStub;
import java.math.BigDecimal;
import java.net.ConnectException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.ObjLongConsumer;
import java.util.function.Supplier;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The worker processes behind one target, one {@link ManagedChannel} (so one TCP connection) each.
 *
 * <p>The kernel hands each new connection to one worker process (SO_REUSEPORT), so discovery opens
 * channels and asks each {@code GetWorkerInfo} until it holds one per worker process, within 4 x
 * workers + 4 attempts (8 x workers + 8 at the start: see {@link #discover}); a channel that lands
 * on a worker already held is closed, and at the start one that does not answer within a second or
 * so (a stalled worker) is given up. A worker whose connection leaves READY (the process died, the
 * server closed it) is dropped at once, since letting its channel reconnect would put it on
 * whichever worker the kernel picks. Each call goes to the worker the {@link Balancer} picks of
 * those that serve the call's model.
 *
 * <p>A reload ({@code AdminService.ReloadModel}) may change which workers serve a model. Every
 * answer's load report says the number of the server's last reload its worker has done: when it
 * is above what the worker said with its models, the pool asks the workers of that server again
 * which models they serve ({@link #follow()}, on the background executor, never on a call's
 * thread), so calls follow the model.
 */
final class WorkerPool implements AutoCloseable {
  private static final Logger LOG = Logger.getLogger(WorkerPool.class.getName());

  /**
   * How long the start waits for a connection's answer while half its connect timeout would be left
   * after it (the last connection waits for the rest).
   */
  static final Duration ANSWER_WAIT = Duration.ofSeconds(1);

  /** The longest {@link #follow()} waits for one worker to say which models it serves. */
  static final Duration FOLLOW_WAIT = Duration.ofSeconds(5);

  /**
   * A worker, the channel that reaches it, and its load: this client's calls on it, the load
   * report of its last answer (read from the trailers of every call on the channel), and the
   * latency of this client's calls there. A report whose reload number is above the one the worker
   * said with its models goes to {@code reloaded}.
   */
  static final class Member implements Balancer.LoadedWorker {
    private volatile Worker worker;
    // the server's last reload the worker had done when it said its models
    private volatile long reload;
    private final ManagedChannel channel;
    private final ObjLongConsumer<Member> reloaded;
    private final ModelServiceBlockingStub stub;
    private final ModelServiceStub asyncStub; // for streams
    private final AtomicInteger inFlight = new AtomicInteger();
    private volatile LoadReport load;
    private final Latency latency = new Latency();

    Member(GetWorkerInfoResponse info, ManagedChannel channel, ObjLongConsumer<Member> reloaded) {
      this.worker = Worker.of(info);
      this.reload = info.getReload();
      this.channel = channel;
      this.reloaded = reloaded;
      Channel watched = ClientInterceptors.intercept(channel, watch());
      this.stub = ModelServiceGrpc.newBlockingStub(watched);
      this.asyncStub = ModelServiceGrpc.newStub(watched);
    }

    @Override
    public Worker worker() {
      return worker;
    }

    @Override
    public int inFlight() {
      return inFlight.get();
    }

    @Override
    public Optional<LoadReport> load() {
      return Optional.ofNullable(load);
    }

    @Override
    public Duration latency() {
      return latency.get();
    }

    ManagedChannel channel() {
      return channel;
    }

    /** The number of the server's last reload the worker had done when it said its models. */
    long reload() {
      return reload;
    }

    /** Take in what the worker's {@code GetWorkerInfo} says now: the models it serves. */
    void follow(GetWorkerInfoResponse info) {
      worker = Worker.of(info);
      reload = info.getReload();
    }

    ModelServiceBlockingStub stub() {
      return stub;
    }

    ModelServiceStub asyncStub() {
      return asyncStub;
    }

    /** Count a call on this worker until {@link #end()}. */
    void begin() {
      inFlight.incrementAndGet();
    }

    void end() {
      inFlight.decrementAndGet();
    }

    /**
     * Fold in the latency of a call on this worker, answered or failed, that began at {@code
     * beganNanos} ({@link System#nanoTime()}) and ended now.
     */
    void recordLatency(long beganNanos) {
      long now = System.nanoTime();
      latency.record(now - beganNanos, now);
    }

    /** An interceptor that keeps the load report in the trailers of each call that ends. */
    private ClientInterceptor watch() {
      return new ClientInterceptor() {
        @Override
        public <Q, R> ClientCall<Q, R> interceptCall(
            MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
          return new SimpleForwardingClientCall<>(next.newCall(method, options)) {
            @Override
            public void start(Listener<R> listener, Metadata headers) {
              super.start(
                  new SimpleForwardingClientCallListener<>(listener) {
                    @Override
                    public void onClose(Status status, Metadata trailers) {
                      LoadReport.of(trailers, System.nanoTime()).ifPresent(Member.this::observe);
                      super.onClose(status, trailers);
                    }
                  },
                  headers);
            }
          };
        }
      };
    }

    private void observe(LoadReport report) {
      load = report;
      if (report.reload() > reload) {
        reloaded.accept(this, report.reload());
      }
    }

    @Override
    public String toString() {
      return "Member(" + worker.key() + ", in flight " + inFlight + ", load " + load
          + ", latency " + latency + ")";
    }
  }

  private final String target; // as the caller gave it, for errors
  private final Supplier<ManagedChannel> channels;
  private final Duration connectTimeout;
  private final boolean waitForServer; // the start waits where the connection is refused
  private final boolean plaintext; // no TLS: named in the start's error when nothing answers
  private final Balancer balancer;
  private final Executor background; // runs follow()
  private final ReentrantLock discovering = new ReentrantLock(); // one search at a time
  private volatile List<Member> members = List.of();
  private volatile int expected; // worker_count last reported, 0 before any
  private volatile boolean closed;
  // Guarded by this: server instance id -> its last reload seen; the workers to ask for their
  // models (their server has reloaded since they said them).
  private final Map<String, Long> reloads = new HashMap<>();
  private final Set<Member> changed = new HashSet<>();
  private final AtomicBoolean following = new AtomicBoolean(); // a follow() waits to run

  /**
   * A pool of the workers at {@code target} (named in errors), reached through {@code channels};
   * {@code background} runs {@link #follow()} when an answer says a worker has done a reload (a
   * single thread, which also runs it every round of the search for missing workers). With {@code
   * waitForServer} the start waits for a server that refuses connections too (see {@link
   * #discover}); {@code plaintext}: the channels use no TLS.
   */
  WorkerPool(
      String target,
      Supplier<ManagedChannel> channels,
      Duration connectTimeout,
      boolean waitForServer,
      boolean plaintext,
      Balancer balancer,
      Executor background) {
    this.target = target;
    this.channels = channels;
    this.connectTimeout = connectTimeout;
    this.waitForServer = waitForServer;
    this.plaintext = plaintext;
    this.balancer = balancer;
    this.background = background;
  }

  /**
   * The worker the balancer picks of those that serve {@code model} (a model placed on some workers
   * only is called there; when none has it, any worker answers that it has no such model),
   * discovering workers first when none is held; FAILED_PRECONDITION at once when closed.
   */
  Member pick(Deadline deadline, String model) {
    checkOpen();
    List<Member> now = members;
    if (now.isEmpty()) {
      discover(deadline, false);
      checkOpen(); // closed while it searched
      now = members;
      if (now.isEmpty()) {
        throw new TmsException(Status.Code.UNAVAILABLE, "no worker of the server answered", null);
      }
    }
    List<Member> having = now.stream().filter(member -> member.worker().has(model)).toList();
    List<Member> from = having.isEmpty() ? now : having;
    return balancer.pick(from);
  }

  /**
   * Throw FAILED_PRECONDITION, "this client is closed; make a new one to call again", once {@link
   * #close()} was called: what every call and stream ends with then, in flight or later.
   */
  void checkOpen() {
    if (closed) {
      throw new TmsException(
          Status.Code.FAILED_PRECONDITION,
          "this client is closed; make a new one to call again",
          null);
    }
  }

  /** Whether some worker the server reported is not held (a restarted one, say). */
  boolean missing() {
    return !closed && members.size() < expected;
  }

  /**
   * Open connections until one is held to each worker process, within {@code deadline} (and the
   * connect timeout) and 4 x workers + 4 attempts, or 8 x workers + 8 at the {@code start}: the
   * kernel hands each new connection to a worker at random, and the start should find them all (a
   * worker missed in about one start in 100,000 at 3 workers), while a later search, which runs
   * again soon, spends every attempt on a worker that is not listening (a restarting one).
   *
   * <p>At the start each connection waits {@link #ANSWER_WAIT} while half the connect timeout would
   * be left after it, and the last one all that is left (a slow but live server still answers), so
   * a stalled worker (one the kernel still hands connections to, but that never answers) costs about
   * a second: the search ends there once a worker is held (the background search finds the rest),
   * and tries another connection while none is and time is left. A later search gives each
   * connection all the time left, and ends at the first that does not answer once a worker is
   * held. Throws when nothing is held and the server refused (a bad token, say), or nothing
   * answered in time (at the start: UNAVAILABLE, "no TMS server answered at TARGET within the
   * connect timeout; is it running, ...?").
   *
   * <p>The start's first connection does not wait for the server to be ready: where nothing
   * listens (its connection is refused) the start fails at once, UNAVAILABLE, saying so, instead of
   * waiting out the connect timeout. A server that accepts the connection, or an address that does
   * not answer at all, is waited for as before. With {@code waitForServer} that connection waits
   * too: a refused connection is tried again until the connect timeout (a server still starting).
   *
   * <p>A search under way (the background's, which may wait the whole connect timeout on a server
   * that is down) is waited for until {@code deadline} at most; then this one returns having found
   * nothing, so that a call keeps its deadline.
   */
  void discover(Deadline deadline, boolean start) {
    long remaining = deadline.timeRemaining(TimeUnit.NANOSECONDS);
    try {
      if (!discovering.tryLock(remaining, TimeUnit.NANOSECONDS)) {
        return;
      }
    } catch (InterruptedException interrupted) {
      Thread.currentThread().interrupt();
      return;
    }
    try {
      Deadline limit =
          Deadline.after(connectTimeout.toNanos(), TimeUnit.NANOSECONDS).minimum(deadline);
      int attempts = 0;
      StatusRuntimeException last = null;
      while (!closed && attempts < (start ? 8 : 4) * (Math.max(expected, 1) + 1)) {
        if (expected > 0 && members.size() >= expected) {
          return;
        }
        attempts++;
        ManagedChannel channel = channels.get();
        ModelServiceBlockingStub stub = ModelServiceGrpc.newBlockingStub(channel);
        boolean probe = start && !waitForServer && attempts == 1; // fails where nothing listens
        Deadline wait = limit;
        long answer = ANSWER_WAIT.toNanos();
        long left = limit.timeRemaining(TimeUnit.NANOSECONDS);
        if (start && left - answer >= connectTimeout.toNanos() / 2) {
          wait = Deadline.after(answer, TimeUnit.NANOSECONDS);
        }
        GetWorkerInfoResponse info;
        try {
          info =
              (probe ? stub : stub.withWaitForReady())
                  .withDeadline(wait)
                  .getWorkerInfo(GetWorkerInfoRequest.getDefaultInstance());
        } catch (StatusRuntimeException error) {
          channel.shutdownNow();
          if (probe && connectionRefused(error)) {
            throw new TmsException(
                Status.Code.UNAVAILABLE,
                "connection refused at " + target + ": is tms-server running?",
                error);
          }
          last = error;
          Status.Code code = error.getStatus().getCode();
          if (code == Status.Code.UNAVAILABLE && !limit.isExpired()) {
            continue; // that worker went away while we connected: try another connection
          }
          boolean refused =
              code == Status.Code.UNAUTHENTICATED || code == Status.Code.PERMISSION_DENIED;
          if (start && !refused && members.isEmpty() && !limit.isExpired()) {
            continue; // a stalled worker, say: another connection may land on a live one
          }
          if (members.isEmpty()) {
            throw failure(error, start);
          }
          return; // keep the workers held; a later discovery finds the rest
        }
        expected = info.getWorkerCount();
        if (!add(new Member(info, channel, this::reloaded))) {
          channel.shutdownNow(); // a second connection to a worker already held
        }
      }
      if (members.isEmpty() && last != null && !closed) {
        throw failure(last, start); // the attempts ran out, and none answered
      }
    } finally {
      discovering.unlock();
    }
  }

  /**
   * The error of a search that holds no worker: at the {@code start}, where no server answered
   * (UNAVAILABLE, DEADLINE_EXCEEDED), UNAVAILABLE and one line naming the target and what to
   * check, as the other clients say it; else as the call failed.
   */
  private TmsException failure(StatusRuntimeException error, boolean start) {
    Status.Code code = error.getStatus().getCode();
    if (!start || (code != Status.Code.UNAVAILABLE && code != Status.Code.DEADLINE_EXCEEDED)) {
      return TmsException.from(error);
    }
    String hint =
        plaintext
            ? "is it running, is that its gRPC port (not its --http-port), and does it serve TLS"
                + " (then pass .credentials(...))?"
            : "is it running, and do the CA, server name and client certificate fit it?";
    String seconds = BigDecimal.valueOf(connectTimeout.toMillis(), 3).stripTrailingZeros()
        .toPlainString();
    return new TmsException(
        Status.Code.UNAVAILABLE,
        "no TMS server answered at " + target + " within " + seconds + "s; " + hint, error);
  }

  /**
   * Whether a call failed because its connection was refused (nothing listens at the address, or
   * at any of the addresses its name resolves to): grpc-java fails a call that does not wait for
   * ready with the transport's connect error as the status's cause.
   */
  static boolean connectionRefused(StatusRuntimeException error) {
    if (error.getStatus().getCode() != Status.Code.UNAVAILABLE) {
      return false;
    }
    for (Throwable cause = error.getStatus().getCause(); cause != null; cause = cause.getCause()) {
      if (cause instanceof ConnectException connect
          && connect.getMessage() != null
          && connect.getMessage().contains("Connection refused")) {
        return true;
      }
    }
    return false;
  }

  private synchronized boolean add(Member member) {
    for (Member held : members) {
      if (held.worker().key().equals(member.worker().key())) {
        return false;
      }
    }
    List<Member> next = new ArrayList<>(members);
    next.add(member);
    members = List.copyOf(next);
    watch(member);
    return true;
  }

  private void watch(Member member) {
    ConnectivityState state = member.channel().getState(false);
    if (state != ConnectivityState.READY) {
      drop(member);
      return;
    }
    member.channel().notifyWhenStateChanged(ConnectivityState.READY, () -> drop(member));
  }

  /** Forget a worker and close its channel (calls in flight on it end as they will). */
  synchronized void drop(Member member) {
    changed.remove(member);
    if (!members.contains(member)) {
      return;
    }
    List<Member> next = new ArrayList<>(members);
    next.remove(member);
    members = List.copyOf(next);
    member.channel().shutdown();
  }

  /**
   * {@code member} answered that it has done reload number {@code reload}, above the one it said
   * with its models: have {@link #follow()} ask it at once and, the first time its server says so,
   * every worker of that server (one asked before it has done the reload is asked again when its
   * own answers say it has). Called as a call ends, on gRPC's thread: it only takes note.
   */
  private void reloaded(Member member, long reload) {
    synchronized (this) {
      if (closed || !members.contains(member)) {
        return;
      }
      String server = member.worker().instanceId();
      if (reload > reloads.getOrDefault(server, 0L)) {
        reloads.put(server, reload);
        for (Member held : members) {
          if (held.worker().instanceId().equals(server)) {
            changed.add(held);
          }
        }
      }
      changed.add(member);
    }
    if (following.compareAndSet(false, true)) {
      try {
        background.execute(
            () -> {
              following.set(false);
              follow();
            });
      } catch (RejectedExecutionException closing) {
        following.set(false);
      }
    }
  }

  /**
   * Ask each worker whose server has reloaded since it said its models which models it serves now,
   * so that calls follow them. One that does not answer, or has not done its server's last reload
   * yet, is asked again at the next call of this (every round of the background search, or sooner
   * when its answers say it has). One whose connection fails is dropped. Run on the background
   * executor only: it blocks on each worker's answer.
   */
  void follow() {
    List<Member> asking;
    synchronized (this) {
      asking = List.copyOf(changed);
    }
    long wait = Math.min(connectTimeout.toNanos(), FOLLOW_WAIT.toNanos());
    for (Member member : asking) {
      if (closed) {
        return;
      }
      if (!members.contains(member)) {
        continue; // dropped meanwhile (drop() forgot it)
      }
      GetWorkerInfoResponse info;
      try {
        // Not through member.stub(): the report in this answer would be taken for news of the
        // reload the answer itself says the worker has done.
        info =
            ModelServiceGrpc.newBlockingStub(member.channel())
                .withDeadline(Deadline.after(wait, TimeUnit.NANOSECONDS))
                .getWorkerInfo(GetWorkerInfoRequest.getDefaultInstance());
      } catch (StatusRuntimeException error) {
        if (error.getStatus().getCode() == Status.Code.UNAVAILABLE
            || TmsClient.connectionLost(error)) {
          drop(member);
        }
        LOG.log(Level.FINE, "asking " + member.worker().key() + " for its models failed", error);
        continue;
      }
      if (!Worker.of(info).key().equals(member.worker().key())) {
        drop(member); // its channel reaches another process now
        continue;
      }
      member.follow(info);
      LOG.fine(() -> "worker " + member.worker().key() + " serves " + info.getModelsList());
      synchronized (this) {
        if (member.reload() >= reloads.getOrDefault(member.worker().instanceId(), 0L)) {
          changed.remove(member);
        }
      }
    }
  }

  List<Worker> workers() {
    return members.stream().map(Member::worker).toList();
  }

  /**
   * Forget every worker and close its channel: the calls and streams in flight on it end at once
   * (grpc-java cancels them, UNAVAILABLE, which the client turns into {@link #checkOpen()}'s
   * error), and later ones fail at once.
   */
  @Override
  public synchronized void close() {
    closed = true;
    for (Member member : members) {
      member.channel().shutdownNow();
    }
    members = List.of();
    changed.clear();
  }

  @Override
  public String toString() {
    return "WorkerPool(workers=" + members.size() + "/" + expected + ")";
  }
}
