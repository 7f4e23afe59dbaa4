package io.tinymodelserver.tms.client;

import java.time.Duration;

/**
 * A worker's recent call latency, a moving average that counts a slower call at once and lets
 * faster ones pull it down with a time constant of one second (Finagle's "peak EWMA"): a worker
 * that turns slow, or stops answering, weighs at once on the {@link Balancer}, and one that
 * recovers is trusted again within seconds. Thread-safe.
 */
final class Latency {
  private static final double DECAY_NANOS = 1e9;

  private volatile double nanos; // 0: no call recorded yet
  private long recordedNanos; // when nanos last changed (System.nanoTime()), guarded by this

  /** Fold in a call that took {@code elapsedNanos} and ended at {@code nowNanos}. */
  synchronized void record(long elapsedNanos, long nowNanos) {
    if (elapsedNanos >= nanos) {
      nanos = elapsedNanos;
    } else {
      double weight = 1 - Math.exp(-(nowNanos - recordedNanos) / DECAY_NANOS);
      nanos += (elapsedNanos - nanos) * weight;
    }
    recordedNanos = nowNanos;
  }

  /** The average; zero before the first call. */
  Duration get() {
    return Duration.ofNanos(Math.round(nanos));
  }

  @Override
  public String toString() {
    return get().toString();
  }
}
