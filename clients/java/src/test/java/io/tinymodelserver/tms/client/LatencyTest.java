package io.tinymodelserver.tms.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import org.junit.jupiter.api.Test;

class LatencyTest {
  private static final long MS = 1_000_000;
  private static final long SECOND = 1_000 * MS;

  private static double millis(Latency latency, long nowNanos) {
    return latency.get(nowNanos).toNanos() / (double) MS;
  }

  @Test
  void zeroBeforeTheFirstCall() {
    assertEquals(Duration.ZERO, new Latency().get());
    assertEquals(Duration.ZERO, new Latency().get(60 * SECOND));
  }

  @Test
  void aSlowerCallCountsAtOnce() {
    Latency latency = new Latency();
    latency.record(10 * MS, 5 * SECOND);
    assertEquals(Duration.ofMillis(10), latency.get(5 * SECOND));
    latency.record(300 * MS, 5 * SECOND + 1);
    assertEquals(Duration.ofMillis(300), latency.get(5 * SECOND + 1));
  }

  @Test
  void fasterCallsPullItDownOverASecond() {
    Latency latency = new Latency();
    long start = 5 * SECOND;
    latency.record(300 * MS, start);
    latency.record(10 * MS, start + 1); // right after: it barely moves
    assertEquals(300, millis(latency, start + 1), 1e-3);
    long second = start + 1 + SECOND;
    latency.record(10 * MS, second); // a second on: 1 - 1/e of the way down (from 300 faded)
    double faded = 300 * Math.exp(-0.1);
    assertEquals(faded - (faded - 10) * (1 - Math.exp(-1)), millis(latency, second), 1e-3);
    latency.record(10 * MS, start + 30 * SECOND);
    assertEquals(10, millis(latency, start + 30 * SECOND), 1e-3);
  }

  @Test
  void fadesWithoutCalls() {
    Latency latency = new Latency();
    long start = 5 * SECOND;
    latency.record(500 * MS, start); // e.g. a call that timed out
    assertEquals(500, millis(latency, start), 1e-3);
    // 500 ms x exp(-30 s / 10 s) = 24.9 ms
    double later = millis(latency, start + 30 * SECOND);
    assertTrue(later < 30, () -> later + " ms 30 s after a 500 ms call and none since");
    assertEquals(500 * Math.exp(-3), later, 1e-3);
  }

  @Test
  void aCallAfterAGapStartsFromTheFadedValue() {
    long start = 5 * SECOND;
    Latency latency = new Latency();
    latency.record(500 * MS, start);
    // 20 s on it has faded to 500 x exp(-2) = 67.7 ms: a 300 ms call is slower, counts at once,
    // and fades from then on.
    long later = start + 20 * SECOND;
    latency.record(300 * MS, later);
    assertEquals(300, millis(latency, later), 1e-3);
    assertEquals(300 * Math.exp(-1), millis(latency, later + 10 * SECOND), 1e-3);
    // A faster call 2 s after a 500 ms one pulls down from the faded 500 x exp(-0.2), not 500.
    latency = new Latency();
    latency.record(500 * MS, start);
    latency.record(100 * MS, start + 2 * SECOND);
    double faded = 500 * Math.exp(-0.2);
    double expected = faded + (100 - faded) * (1 - Math.exp(-2)); // 141.9 (154.1 unfaded)
    assertEquals(expected, millis(latency, start + 2 * SECOND), 1e-3);
  }
}
