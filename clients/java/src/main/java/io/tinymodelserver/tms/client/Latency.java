package io.tinymodelserver.tms.client;

import java.time.Duration;

/**
 * A worker's recent call latency, a moving average that counts a slower call at once and lets
 * faster ones pull it down with a time constant of one second (Finagle's "peak EWMA"): a worker
 * that turns slow, or stops answering, weighs at once on the {@link Balancer}, and one that
 * recovers is trusted again within seconds. Without calls it fades toward zero over about ten
 * seconds, read as {@code recorded x exp(-(now - recordedAt) / 10 s)}, as Finagle's does: a worker
 * the balancer no longer picks records no call that could bring it down, so fading is what has it
 * tried again. Thread-safe.
 */
final class Latency {
  private static final double DECAY_NANOS = 1e9;

  /**
   * The time constant over which a latency fades while no call is recorded: a worker left aside
   * for a high latency (stopped and resumed, or once slow) must be tried again in time, not be
   * starved for good. Finagle's peak EWMA default.
   */
  private static final double FADE_NANOS = 10e9;

  private double nanos; // 0: no call recorded yet; guarded by this
  private long recordedNanos; // when nanos was recorded (System.nanoTime()), guarded by this

  /** Fold in a call that took {@code elapsedNanos} and ended at {@code nowNanos}. */
  synchronized void record(long elapsedNanos, long nowNanos) {
    double current = faded(nowNanos);
    if (elapsedNanos >= current) {
      nanos = elapsedNanos;
    } else {
      double weight = 1 - Math.exp(-Math.max(nowNanos - recordedNanos, 0) / DECAY_NANOS);
      nanos = current + (elapsedNanos - current) * weight;
    }
    recordedNanos = nowNanos;
  }

  /** The average now, faded since the last call; zero before the first call. */
  Duration get() {
    return get(System.nanoTime());
  }

  /** The average at {@code nowNanos} ({@link System#nanoTime()}); zero before the first call. */
  synchronized Duration get(long nowNanos) {
    return Duration.ofNanos(Math.round(faded(nowNanos)));
  }

  /** The recorded average faded to {@code nowNanos}; the caller holds this. */
  private double faded(long nowNanos) {
    if (nanos == 0) {
      return 0;
    }
    return nanos * Math.exp(-Math.max(nowNanos - recordedNanos, 0) / FADE_NANOS);
  }

  @Override
  public String toString() {
    return get().toString();
  }
}
