package io.tinymodelserver.tms.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.time.Duration;
import org.junit.jupiter.api.Test;

class LatencyTest {
  private static final long MS = 1_000_000;
  private static final long SECOND = 1_000 * MS;

  private static double millis(Latency latency) {
    return latency.get().toNanos() / (double) MS;
  }

  @Test
  void zeroBeforeTheFirstCall() {
    assertEquals(Duration.ZERO, new Latency().get());
  }

  @Test
  void aSlowerCallCountsAtOnce() {
    Latency latency = new Latency();
    latency.record(10 * MS, 5 * SECOND);
    assertEquals(Duration.ofMillis(10), latency.get());
    latency.record(300 * MS, 5 * SECOND + 1);
    assertEquals(Duration.ofMillis(300), latency.get());
  }

  @Test
  void fasterCallsPullItDownOverASecond() {
    Latency latency = new Latency();
    long start = 5 * SECOND;
    latency.record(300 * MS, start);
    latency.record(10 * MS, start + 1); // right after: it barely moves
    assertEquals(300, millis(latency), 1e-3);
    latency.record(10 * MS, start + 1 + SECOND); // a second on: 1 - 1/e of the way down
    assertEquals(300 - 290 * (1 - Math.exp(-1)), millis(latency), 1e-3);
    latency.record(10 * MS, start + 30 * SECOND);
    assertEquals(10, millis(latency), 1e-3);
  }
}
