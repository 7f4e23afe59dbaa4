/**
 * Retry policy: which failed calls are tried again, how often, and how long to wait between.
 *
 * A policy is an immutable value; `with*` methods return a changed copy:
 *
 *     RetryPolicy.default().withAttempts(10).withBackoff(100, 5_000)
 *     RetryPolicy.never()
 *
 * Model calls are idempotent, so a call that failed with UNAVAILABLE (the worker or server went
 * away) is safe to send again, to another worker. So is one that failed with CANCELLED: a
 * stopping server cancels the calls it has not started. And so is one whose status carries a
 * google.rpc.RetryInfo, whatever its code (QUEUE_FULL: wait 0.1 s; DRAINING: retry at once):
 * it is sent again after the delay the server asked for instead of the backoff. Every retry
 * counts against the attempts and the call's deadline. (A call the caller aborts through its
 * AbortSignal is never retried.)
 */
import { status } from "@grpc/grpc-js";

import { TmsError } from "./errors.js";

/** The fields of a RetryPolicy; times in milliseconds. */
export interface RetrySettings {
  /** Attempts in all, the first included (default 5). */
  readonly attempts: number;
  /** Wait before the first retry (default 50). */
  readonly initialBackoffMs: number;
  /** Longest wait between attempts (default 2 000). */
  readonly maxBackoffMs: number;
  /** Each wait is the previous one times this (default 2). */
  readonly multiplier: number;
  /** Each wait is scaled by a random factor in [1 - jitter, 1 + jitter] (default 0.5). */
  readonly jitter: number;
  /** The codes that are retried (default UNAVAILABLE and CANCELLED); a status with RetryInfo
   * is retried whatever its code. */
  readonly codes: ReadonlySet<status>;
}

export class RetryPolicy implements RetrySettings {
  readonly attempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly multiplier: number;
  readonly jitter: number;
  readonly codes: ReadonlySet<status>;

  constructor(settings: Partial<RetrySettings> = {}) {
    this.attempts = settings.attempts ?? 5;
    this.initialBackoffMs = settings.initialBackoffMs ?? 50;
    this.maxBackoffMs = settings.maxBackoffMs ?? 2_000;
    this.multiplier = settings.multiplier ?? 2;
    this.jitter = settings.jitter ?? 0.5;
    this.codes = new Set(settings.codes ?? [status.UNAVAILABLE, status.CANCELLED]);
    if (!Number.isInteger(this.attempts) || this.attempts < 1) throw new RangeError("attempts must be at least 1");
    if (this.initialBackoffMs < 0 || this.maxBackoffMs < 0 || this.multiplier < 1) {
      throw new RangeError("backoffs must be >= 0 and the multiplier >= 1");
    }
    if (!(this.jitter >= 0 && this.jitter <= 1)) throw new RangeError("jitter must be between 0 and 1");
    Object.freeze(this);
  }

  /** The default policy. */
  static default(): RetryPolicy {
    return new RetryPolicy();
  }

  /** A policy that tries each call once. */
  static never(): RetryPolicy {
    return new RetryPolicy({ attempts: 1 });
  }

  withAttempts(attempts: number): RetryPolicy {
    return new RetryPolicy({ ...this, attempts });
  }

  withBackoff(initialMs: number, maxMs: number, multiplier = this.multiplier): RetryPolicy {
    return new RetryPolicy({ ...this, initialBackoffMs: initialMs, maxBackoffMs: maxMs, multiplier });
  }

  withJitter(jitter: number): RetryPolicy {
    return new RetryPolicy({ ...this, jitter });
  }

  withCodes(codes: Iterable<status>): RetryPolicy {
    return new RetryPolicy({ ...this, codes: new Set(codes) });
  }

  /** Whether a call that failed with `code` may be tried again: a code the policy names, or
   * any code with the server's RetryInfo (`retryDelayMs`, from TmsError). */
  retries(code: status, retryDelayMs?: number): boolean {
    return this.codes.has(code) || retryDelayMs !== undefined;
  }

  /** Milliseconds to wait before retry number `retry` (1 for the first retry). */
  backoffMs(retry: number, uniform: () => number = Math.random): number {
    const delay = Math.min(this.maxBackoffMs, this.initialBackoffMs * this.multiplier ** (retry - 1));
    return delay * (1 - this.jitter + 2 * this.jitter * uniform());
  }

  toString(): string {
    return `RetryPolicy(attempts=${this.attempts}, backoff=${this.initialBackoffMs}..${this.maxBackoffMs}ms)`;
  }
}

/** The longest deadline a call is given, in milliseconds (over three years): grpc-js throws on a
 * deadline further off, so a longer timeoutMs (Infinity too) means none, as in the Python client. */
export const LONGEST_TIMEOUT_MS = 1e11;

/** The attempts of one call under a policy and a deadline. */
export class Attempts {
  number = 0;
  /** Keys of the workers tried so far. */
  readonly tried = new Set<string>();
  /** performance.now() time by which every attempt must end (Infinity: none). */
  readonly deadline: number;

  constructor(
    readonly policy: RetryPolicy,
    timeoutMs: number | null,
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.deadline = timeoutMs === null || timeoutMs >= LONGEST_TIMEOUT_MS ? Infinity : clock() + timeoutMs;
  }

  /** Milliseconds left for this call (Infinity: no limit). */
  remaining(): number {
    return this.deadline - this.clock();
  }

  /** The deadline as grpc-js takes it, a Date.now() time (Infinity: none). */
  wallDeadline(): number {
    return Date.now() + this.remaining();
  }

  /** Start the next attempt; throws DEADLINE_EXCEEDED when no time is left. */
  begin(): void {
    this.number += 1;
    if (this.remaining() <= 0) {
      throw new TmsError(status.DEADLINE_EXCEEDED, "the call's deadline passed before an attempt");
    }
  }

  /** After a failed attempt: milliseconds to wait before the next one (the server's RetryInfo
   * delay if it sent one, else the backoff); throws `error` when the policy does not retry it,
   * attempts are used up or the deadline would pass. */
  delayAfter(error: TmsError): number {
    const { code, retryDelayMs } = error;
    if (!this.policy.retries(code, retryDelayMs) || this.number >= this.policy.attempts) throw error;
    const delay = retryDelayMs ?? this.policy.backoffMs(this.number);
    if (this.remaining() <= delay) throw error;
    return delay;
  }
}
