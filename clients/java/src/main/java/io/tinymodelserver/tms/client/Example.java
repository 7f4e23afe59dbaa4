package io.tinymodelserver.tms.client;

import com.google.protobuf.ByteString;
import io.tinymodelserver.tms.v1.ColorOrder;
import io.tinymodelserver.tms.v1.DType;
import io.tinymodelserver.tms.v1.Image;
import io.tinymodelserver.tms.v1.ModelInfo;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.StringJoiner;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * An example command, also what tests/test_java_sdk.py drives:
 *
 * <pre>
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET models
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET load MODEL
 *     [--threads N] [--calls N | --seconds S]
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET stream MODEL [--frames N]
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET closed MODEL
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET close MODEL [--threads N]
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET follow MODEL [--seconds S]
 * java -cp ... io.tinymodelserver.tms.client.Example [OPTIONS] TARGET connect
 * OPTIONS: [--token T] [--attempts N] [--balancer least-loaded | round-robin] [--timeout S]
 *     [--connect-timeout S] [--wait-for-server]
 * </pre>
 *
 * {@code models} prints the model names, one a line. {@code load} sends a 2x2 BGR image to MODEL
 * from N threads and prints one JSON line: calls, failures (each "CODE REASON: details"), the pids
 * the results name (the model's {@code "pid"}) and how many calls each answered, the workers held
 * at the start, and the longest call in seconds (answered or failed); it writes "calls flowing"
 * to stderr once every thread has had an answer. {@code stream} sends N 2x2 BGR frames (default
 * 10) to MODEL over one stream and prints one JSON line: the frames answered, the ids of those
 * that failed alone, and the stream's failure ("CODE: details", or null). {@code closed} closes
 * the client, then calls MODEL and opens a stream to it, and prints one JSON line: the call's and
 * the stream's failures ("CODE: details", or null) and the seconds both took. {@code close}
 * starts N calls of MODEL and one stream of two frames with args {"sleep": 3}, closes the client
 * 300 ms later, then calls MODEL and opens a stream to it, and prints one JSON line: how each
 * ended, {"failure": "CODE: details" or null, "seconds": since close() for those in flight, since
 * they began for the others}, as "in_flight" (the calls), "stream", "call" and "stream_after".
 * {@code follow}
 * waits for every worker to be held, sends MODEL 10 calls one after another and prints one JSON
 * line, the pids they reached; then it waits for a line on stdin (a test reloads the model
 * meanwhile) and sends batches of 10 calls until one reaches every worker held, or S seconds
 * (default 10) pass, and prints one JSON line: the last batch's pids, the seconds since the line,
 * and the models each worker serves, by pid. {@code connect} starts a client and prints one JSON
 * line: the workers it found, its failure ("CODE: details", or null) and the seconds the start
 * took. {@code --attempts}
 * is the client's attempts per call (default 5), {@code --balancer} its balancer (default
 * least-loaded), {@code --timeout} each call's deadline in seconds (default 20), {@code
 * --connect-timeout} the client's connect timeout in seconds (default 10), and {@code
 * --wait-for-server} has the start wait, within it, for a server that refuses connections (one
 * not listening yet) instead of failing at once.
 */
public final class Example {
  private static final Pattern PID = Pattern.compile("\"pid\":\\s*(\\d+)");

  private Example() {}

  public static void main(String[] args) throws IOException, InterruptedException {
    List<String> rest = new ArrayList<>(List.of(args));
    String token = option(rest, "--token", null);
    int attempts = Integer.parseInt(option(rest, "--attempts", "5"));
    String balancer = option(rest, "--balancer", "least-loaded");
    double timeout = Double.parseDouble(option(rest, "--timeout", "20"));
    double connectTimeout = Double.parseDouble(option(rest, "--connect-timeout", "10"));
    boolean waitForServer = rest.remove("--wait-for-server");
    int threads = Integer.parseInt(option(rest, "--threads", "4"));
    int calls = Integer.parseInt(option(rest, "--calls", "0"));
    double seconds = Double.parseDouble(option(rest, "--seconds", "0"));
    int frames = Integer.parseInt(option(rest, "--frames", "10"));
    if (rest.size() < 2) {
      System.err.println(
          "usage: Example [--token T] [--attempts N] [--balancer B] [--timeout S]"
              + " [--connect-timeout S] [--wait-for-server] TARGET models"
              + " | load MODEL [--threads N] [--calls N | --seconds S]"
              + " | stream MODEL [--frames N] | closed MODEL | close MODEL [--threads N]"
              + " | follow MODEL [--seconds S]"
              + " | connect");
      System.exit(2);
    }
    TmsClient.Builder builder;
    try {
      builder = TmsClient.builder(rest.get(0));
    } catch (IllegalArgumentException error) { // a target that cannot work: a usage error
      System.err.println("error: " + error.getMessage());
      System.exit(2);
      return;
    }
    builder
        .timeout(Duration.ofNanos((long) (timeout * 1e9)))
        .connectTimeout(Duration.ofNanos((long) (connectTimeout * 1e9)))
        .waitForServer(waitForServer)
        .attempts(attempts)
        .balancer(
            switch (balancer) {
              case "least-loaded" -> Balancer.leastLoaded();
              case "round-robin" -> Balancer.roundRobin();
              default -> throw new IllegalArgumentException("unknown balancer " + balancer);
            });
    if (token != null) {
      builder.token(token);
    }
    if (rest.get(1).equals("connect")) {
      connect(builder);
      return;
    }
    try (TmsClient client = builder.build()) {
      switch (rest.get(1)) {
        case "models" ->
            client.listModels().stream().map(ModelInfo::getName).forEach(System.out::println);
        case "load" -> load(client, rest.get(2), threads, calls, seconds);
        case "stream" -> stream(client, rest.get(2), frames);
        case "closed" -> closed(client, rest.get(2));
        case "close" -> closeUnderLoad(client, rest.get(2), threads);
        case "follow" -> follow(client, rest.get(2), seconds > 0 ? seconds : 10);
        default -> throw new IllegalArgumentException("unknown command " + rest.get(1));
      }
    } catch (TmsException error) {
      System.err.println("error: " + error.getMessage());
      System.exit(1);
    }
  }

  private static final Image TINY =
      Image.newBuilder()
          .setDtype(DType.D_TYPE_UINT8)
          .addShape(2).addShape(2).addShape(3)
          .setColorOrder(ColorOrder.COLOR_ORDER_BGR)
          .setData(ByteString.copyFrom(new byte[12]))
          .build();

  private static void connect(TmsClient.Builder builder) {
    long began = System.nanoTime();
    int workers = 0;
    String failure = null;
    try (TmsClient client = builder.build()) {
      workers = client.workers().size();
    } catch (TmsException error) {
      failure = quote(error.code() + ": " + error.details());
    }
    double seconds = (System.nanoTime() - began) / 1e9;
    System.out.println(
        "{\"workers\": " + workers + ", \"failure\": " + failure + ", \"seconds\": " + seconds
            + "}");
  }

  private static void stream(TmsClient client, String model, int frames) {
    int answered = 0;
    List<Long> failed = new ArrayList<>();
    String failure = null;
    try (FrameStream results =
        client.runImageStream(model, Collections.nCopies(frames, TINY).iterator(), "{}")) {
      while (results.hasNext()) {
        TmsClient.FrameResult result = results.next();
        answered++;
        if (result.error() != null) {
          failed.add(result.frameId());
        }
      }
    } catch (TmsException error) {
      failure = quote(error.code() + ": " + error.details());
    }
    System.out.println(
        "{\"answered\": " + answered + ", \"failed\": " + failed + ", \"failure\": " + failure
            + "}");
  }

  private static void closed(TmsClient client, String model) {
    client.close();
    long began = System.nanoTime();
    String call = null;
    try {
      client.runImage(model, TINY, "{}");
    } catch (TmsException error) {
      call = quote(error.code() + ": " + error.details());
    }
    String stream = null;
    try (FrameStream results = client.runImageStream(model, List.of(TINY).iterator(), "{}")) {
      results.forEachRemaining(result -> {});
    } catch (TmsException error) {
      stream = quote(error.code() + ": " + error.details());
    }
    double seconds = (System.nanoTime() - began) / 1e9;
    System.out.println(
        "{\"call\": " + call + ", \"stream\": " + stream + ", \"seconds\": " + seconds + "}");
  }

  private static void closeUnderLoad(TmsClient client, String model, int threads)
      throws InterruptedException {
    String slow = "{\"sleep\": 3}";
    AtomicLong since = new AtomicLong(System.nanoTime());
    String[] ends = new String[threads + 1]; // the calls, then the stream
    List<Thread> running = new ArrayList<>();
    for (int i = 0; i <= threads; i++) {
      int at = i;
      Runnable work =
          at < threads
              ? () -> client.runImage(model, TINY, slow)
              : () -> drain(client.runImageStream(model, List.of(TINY, TINY).iterator(), slow));
      Thread thread = new Thread(() -> ends[at] = ended(work, since));
      thread.start();
      running.add(thread);
    }
    Thread.sleep(300);
    since.set(System.nanoTime());
    client.close();
    for (Thread thread : running) {
      thread.join();
    }
    since.set(System.nanoTime());
    String call = ended(() -> client.runImage(model, TINY, "{}"), since);
    since.set(System.nanoTime());
    String after =
        ended(() -> drain(client.runImageStream(model, List.of(TINY).iterator(), "{}")), since);
    StringJoiner inFlight = new StringJoiner(", ", "[", "]");
    List.of(ends).subList(0, threads).forEach(inFlight::add);
    System.out.println(
        "{\"in_flight\": " + inFlight + ", \"stream\": " + ends[threads] + ", \"call\": " + call
            + ", \"stream_after\": " + after + "}");
  }

  /** Read every result of {@code results}, then close it. */
  private static void drain(FrameStream results) {
    try (results) {
      results.forEachRemaining(result -> {});
    }
  }

  /**
   * Run {@code work}: how it ended, {"failure": "CODE: details" or null, "seconds": since the
   * time in {@code since}}.
   */
  private static String ended(Runnable work, AtomicLong since) {
    String failure = null;
    try {
      work.run();
    } catch (TmsException error) {
      failure = quote(error.code() + ": " + error.details());
    }
    double seconds = (System.nanoTime() - since.get()) / 1e9;
    return "{\"failure\": " + failure + ", \"seconds\": " + seconds + "}";
  }

  private static void follow(TmsClient client, String model, double seconds)
      throws IOException, InterruptedException {
    long end = System.nanoTime() + (long) (seconds * 1e9);
    while (client.workers().size() < client.workers().get(0).workerCount()
        && System.nanoTime() < end) {
      Thread.sleep(10);
    }
    System.out.println("{\"pids\": " + batch(client, model) + "}");
    System.out.flush();
    new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)).readLine();
    long began = System.nanoTime();
    end = began + (long) (seconds * 1e9);
    Set<Long> pids = batch(client, model);
    while (pids.size() < client.workers().size() && System.nanoTime() < end) {
      pids = batch(client, model);
    }
    double waited = (System.nanoTime() - began) / 1e9;
    StringJoiner models = new StringJoiner(", ", "{", "}");
    for (Worker worker : client.workers()) {
      StringJoiner names = new StringJoiner(", ", "[", "]");
      new TreeSet<>(worker.models()).forEach(name -> names.add(quote(name)));
      models.add("\"" + worker.pid() + "\": " + names);
    }
    System.out.println(
        "{\"pids\": " + pids + ", \"seconds\": " + waited + ", \"models\": " + models + "}");
  }

  /** The pids that 10 calls of {@code model}, one after another, reached. */
  private static Set<Long> batch(TmsClient client, String model) {
    Set<Long> pids = new TreeSet<>();
    for (int i = 0; i < 10; i++) {
      Matcher pid = PID.matcher(client.runImage(model, TINY, "{}"));
      if (pid.find()) {
        pids.add(Long.parseLong(pid.group(1)));
      }
    }
    return pids;
  }

  private static void load(TmsClient client, String model, int threads, int calls, double seconds)
      throws InterruptedException {
    Image image = TINY;
    int workersAtStart = client.workers().size();
    long end = System.nanoTime() + (long) (seconds * 1e9);
    AtomicInteger started = new AtomicInteger();
    AtomicInteger done = new AtomicInteger();
    AtomicLong longest = new AtomicLong();
    Map<Long, Integer> pids = new ConcurrentHashMap<>();
    List<String> failures = Collections.synchronizedList(new ArrayList<>());
    List<Thread> running = new ArrayList<>();
    for (int i = 0; i < threads; i++) {
      Thread thread =
          new Thread(
              () -> {
                while (calls > 0 ? started.getAndIncrement() < calls : System.nanoTime() < end) {
                  long began = System.nanoTime();
                  try {
                    Matcher pid = PID.matcher(client.runImage(model, image, "{}"));
                    if (pid.find()) {
                      pids.merge(Long.parseLong(pid.group(1)), 1, Integer::sum);
                    }
                    done.incrementAndGet();
                  } catch (TmsException error) {
                    failures.add(error.getMessage());
                  } finally {
                    longest.accumulateAndGet(System.nanoTime() - began, Math::max);
                  }
                }
              });
      thread.start();
      running.add(thread);
    }
    while (done.get() < threads && running.stream().anyMatch(Thread::isAlive)) {
      Thread.sleep(10);
    }
    System.err.println("calls flowing"); // a test may now kill a worker
    for (Thread thread : running) {
      thread.join();
    }
    StringBuilder json = new StringBuilder("{\"calls\": ").append(done.get());
    json.append(", \"workers\": ").append(workersAtStart).append(", \"pids\": ");
    StringJoiner byPid = new StringJoiner(", ", "{", "}");
    new TreeMap<>(pids).forEach((pid, n) -> byPid.add("\"" + pid + "\": " + n));
    json.append(new TreeSet<>(pids.keySet())).append(", \"calls_by_pid\": ").append(byPid);
    json.append(", \"longest\": ").append(longest.get() / 1e9);
    json.append(", \"failures\": [");
    synchronized (failures) {
      for (int i = 0; i < failures.size(); i++) {
        json.append(i == 0 ? "" : ", ").append(quote(failures.get(i)));
      }
    }
    System.out.println(json.append("]}"));
  }

  private static String option(List<String> args, String name, String fallback) {
    int at = args.indexOf(name);
    if (at < 0 || at + 1 >= args.size()) {
      return fallback;
    }
    String value = args.get(at + 1);
    args.subList(at, at + 2).clear();
    return value;
  }

  private static String quote(String text) {
    StringBuilder quoted = new StringBuilder("\"");
    for (char c : text.toCharArray()) {
      if (c == '"' || c == '\\') {
        quoted.append('\\').append(c);
      } else if (c < 0x20) {
        quoted.append(String.format("\\u%04x", (int) c)); // a newline, a tab in gRPC's details
      } else {
        quoted.append(c);
      }
    }
    return quoted.append('"').toString();
  }
}
