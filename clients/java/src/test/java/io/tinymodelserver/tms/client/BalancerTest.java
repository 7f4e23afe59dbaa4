package io.tinymodelserver.tms.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.time.Duration;
import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.Test;

/** Which worker {@link Balancer#leastLoaded()} picks of two (so every pick compares both). */
class BalancerTest {
  private static final Duration FAST = Duration.ofMillis(10);
  private static final Duration SLOW = Duration.ofMillis(300);
  private static final Duration UNKNOWN = Duration.ZERO;

  record Fake(Worker worker, int inFlight, Optional<LoadReport> load, Duration latency)
      implements Balancer.LoadedWorker {
    Fake(long pid, int inFlight, Duration latency) {
      this(pid, inFlight, Optional.empty(), latency);
    }

    Fake(long pid, int inFlight, Optional<LoadReport> load, Duration latency) {
      this(new Worker("test", pid, 0, 2, List.of()), inFlight, load, latency);
    }
  }

  /** A worker whose latency is a {@link Latency} read at each pick, as a pool's member. */
  record Recorded(Worker worker, int inFlight, Latency recorded) implements Balancer.LoadedWorker {
    Recorded(long pid, Latency recorded) {
      this(new Worker("test", pid, 0, 2, List.of()), 0, recorded);
    }

    @Override
    public Optional<LoadReport> load() {
      return Optional.empty();
    }

    @Override
    public Duration latency() {
      return recorded.get();
    }
  }

  /** The worker {@code leastLoaded()} picks of {@code a} and {@code b}, the same in 100 picks. */
  private static Balancer.LoadedWorker picked(Balancer.LoadedWorker a, Balancer.LoadedWorker b) {
    Balancer balancer = Balancer.leastLoaded();
    Balancer.LoadedWorker first = balancer.pick(List.of(a, b));
    for (int i = 0; i < 100; i++) {
      assertEquals(first, balancer.pick(List.of(a, b)));
      assertEquals(first, balancer.pick(List.of(b, a)));
    }
    return first;
  }

  @Test
  void aSlowWorkerLosesToAFastOneWithEqualCalls() {
    Fake fast = new Fake(1, 0, FAST);
    assertEquals(fast, picked(new Fake(2, 0, SLOW), fast));
    Fake busyFast = new Fake(1, 3, FAST);
    assertEquals(busyFast, picked(new Fake(2, 3, SLOW), busyFast));
  }

  @Test
  void theLoadIsWeighedByTheLatency() {
    Fake slow = new Fake(2, 0, Duration.ofMillis(20)); // 1 x 20 ms
    assertEquals(slow, picked(new Fake(1, 2, FAST), slow)); // 3 x 10 ms
  }

  @Test
  void aFreshLoadReportCountsAnOldOneDoesNot() {
    long now = System.nanoTime();
    Optional<LoadReport> fresh = Optional.of(new LoadReport(2, 1, now));
    Optional<LoadReport> old = Optional.of(new LoadReport(2, 1, now - 5_000_000_000L));
    Fake idle = new Fake(2, 1, FAST);
    assertEquals(idle, picked(new Fake(1, 0, fresh, FAST), idle));
    Fake reported = new Fake(1, 0, old, FAST);
    assertEquals(reported, picked(reported, new Fake(2, 1, FAST)));
  }

  @Test
  void aWorkerWithNoLatencyYetCountsAsTheOther() {
    Fake known = new Fake(1, 0, FAST);
    assertEquals(known, picked(new Fake(2, 1, UNKNOWN), known));
    Fake fresh = new Fake(2, 0, UNKNOWN);
    assertEquals(fresh, picked(fresh, new Fake(1, 1, FAST)));
    Fake alsoFresh = new Fake(1, 0, UNKNOWN);
    assertEquals(alsoFresh, picked(alsoFresh, new Fake(2, 1, UNKNOWN)));
  }

  @Test
  void aStoppedWorkerWhoseCallTimedOutLosesToALiveOneThatJustAnswered() {
    // The live worker's report counts the call it answered; the stopped one sends none.
    Optional<LoadReport> answered = Optional.of(new LoadReport(1, 0, System.nanoTime()));
    Fake live = new Fake(1, 0, answered, FAST);
    assertEquals(live, picked(new Fake(2, 0, SLOW), live));
  }

  @Test
  void aWorkerWhoseCallTimedOutLongAgoIsTriedAgain() {
    // A call timed out at 500 ms on one worker 40 s ago (stopped, since resumed) and none has
    // been sent there since: its latency has faded to 500 x exp(-4) = 9.2 ms, under the 10 ms of
    // the other, which just answered. With equal calls, the first is tried again.
    long now = System.nanoTime();
    Latency timedOut = new Latency();
    timedOut.record(Duration.ofMillis(500).toNanos(), now - Duration.ofSeconds(40).toNanos());
    Latency answered = new Latency();
    answered.record(FAST.toNanos(), now);
    Recorded resumed = new Recorded(2, timedOut);
    assertEquals(resumed, picked(new Recorded(1, answered), resumed));
  }

  @Test
  void oneWorkerIsPicked() {
    Fake only = new Fake(1, 5, SLOW);
    assertEquals(only, Balancer.leastLoaded().pick(List.of(only)));
  }
}
