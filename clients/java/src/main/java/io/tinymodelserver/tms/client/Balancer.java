package io.tinymodelserver.tms.client;

import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Picks the worker for the next call, from the workers that serve its model ({@code workers} is
 * never empty); pass one to {@link TmsClient.Builder#balancer}. {@link #leastLoaded()} is the
 * default.
 */
@FunctionalInterface
public interface Balancer {
  /** What a balancer may read of a worker. */
  interface LoadedWorker {
    /** The worker, as its {@code GetWorkerInfo} described it. */
    Worker worker();

    /** This client's calls on the worker now. */
    int inFlight();

    /** The load the worker reported in its last answer to this client. */
    Optional<LoadReport> load();

    /**
     * This client's recent calls on the worker, answered or failed: how long they took, a moving
     * average that counts a slower call at once and decays over a second, and that fades over
     * about ten seconds without calls (zero before the first).
     */
    Duration latency();
  }

  <W extends LoadedWorker> W pick(List<W> workers);

  /** Each worker in turn. */
  static Balancer roundRobin() {
    AtomicLong turn = new AtomicLong();
    return new Balancer() {
      @Override
      public <W extends LoadedWorker> W pick(List<W> workers) {
        return workers.get((int) Math.floorMod(turn.getAndIncrement(), (long) workers.size()));
      }

      @Override
      public String toString() {
        return "roundRobin()";
      }
    };
  }

  /** {@link #leastLoaded(Duration)} with reports up to a second old. */
  static Balancer leastLoaded() {
    return leastLoaded(Duration.ofSeconds(1));
  }

  /**
   * The less loaded of two workers chosen at random ("power of two choices"). A worker's load is
   * the larger of this client's calls in flight on it and the calls in flight and queued it last
   * reported (a report older than {@code maxReportAge} is ignored): the first is exact for this
   * client, the second also sees other clients. The load is weighed by the worker's recent {@link
   * LoadedWorker#latency() latency}: the cost of one more call there is (load + 1) x latency, so a
   * slow call, or one that times out on a stopped worker, steers the next calls away from it. The
   * latency fades over about ten seconds without calls, so a worker left aside for it (stopped and
   * resumed, or once slow) is tried again in time instead of never. A worker with no latency yet
   * (no call of this client has ended there) counts as having the other's, so one stuck before its
   * first answer does not draw every call. Sampling two workers, not taking the least loaded of
   * all, keeps many clients from piling onto the same idle worker.
   */
  static Balancer leastLoaded(Duration maxReportAge) {
    long maxAge = maxReportAge.toNanos();
    return new Balancer() {
      @Override
      public <W extends LoadedWorker> W pick(List<W> workers) {
        if (workers.size() == 1) {
          return workers.get(0);
        }
        ThreadLocalRandom random = ThreadLocalRandom.current();
        int first = random.nextInt(workers.size());
        int second = random.nextInt(workers.size() - 1);
        W a = workers.get(first);
        W b = workers.get(second >= first ? second + 1 : second);
        long now = System.nanoTime();
        // Each latency read once (it fades as time goes by). A worker with no latency yet counts
        // as the other: compared by load alone.
        long latencyA = a.latency().toNanos();
        long latencyB = b.latency().toNanos();
        long unknown = Math.max(Math.max(latencyA, latencyB), 1);
        return cost(b, latencyB, unknown, now) < cost(a, latencyA, unknown, now) ? b : a;
      }

      /**
       * The expected cost of one more call on {@code worker}: (calls ahead + 1) x its {@code
       * latency} (nanoseconds), or {@code unknown} nanoseconds when it has none yet.
       */
      private double cost(LoadedWorker worker, long latency, long unknown, long now) {
        int calls = worker.inFlight();
        Optional<LoadReport> report = worker.load();
        if (report.isPresent() && now - report.get().receivedNanos() <= maxAge) {
          calls = Math.max(calls, report.get().total());
        }
        return (calls + 1.0) * (latency > 0 ? latency : unknown);
      }

      @Override
      public String toString() {
        return "leastLoaded(" + maxReportAge + ")";
      }
    };
  }
}
