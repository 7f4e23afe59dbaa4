/** Trailers as a TMS server writes them: a google.rpc.Status's details, a load report. */
import { Metadata } from "@grpc/grpc-js";

import { DETAILS_KEY } from "../src/errors.js";
import { BadRequest, ErrorInfo, RetryInfo } from "../src/gen/google/rpc/error_details.js";
import { Status } from "../src/gen/google/rpc/status.js";

export interface Details {
  reason?: string;
  metadata?: Record<string, string>;
  fields?: string[];
  retryDelayMs?: number;
}

/** Trailers whose `grpc-status-details-bin` holds an ErrorInfo (domain "tms") when `reason`
 * is given, a BadRequest when `fields` are, and a RetryInfo when `retryDelayMs` is. */
export function detailsTrailers(code: number, details: Details): Metadata {
  const any = (type: string, value: Uint8Array) => ({ typeUrl: `type.googleapis.com/google.rpc.${type}`, value: Buffer.from(value) });
  const parts = [];
  if (details.reason !== undefined) {
    const info = ErrorInfo.fromPartial({ reason: details.reason, domain: "tms", metadata: details.metadata ?? {} });
    parts.push(any("ErrorInfo", ErrorInfo.encode(info).finish()));
  }
  if (details.fields !== undefined) {
    const violations = details.fields.map((field) => ({ field, description: `bad ${field}` }));
    parts.push(any("BadRequest", BadRequest.encode(BadRequest.fromPartial({ fieldViolations: violations })).finish()));
  }
  if (details.retryDelayMs !== undefined) {
    const ms = details.retryDelayMs;
    const retryDelay = { seconds: Math.floor(ms / 1_000), nanos: (ms % 1_000) * 1e6 };
    parts.push(any("RetryInfo", RetryInfo.encode(RetryInfo.fromPartial({ retryDelay })).finish()));
  }
  const trailers = new Metadata();
  trailers.set(DETAILS_KEY, Buffer.from(Status.encode({ code, message: "m", details: parts }).finish()));
  return trailers;
}

/** An OrcaLoadReport with `metrics` as named_metrics (field 8), as the server writes it (after
 * a field 1, which readers skip). */
export function orca(metrics: Record<string, number>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of Object.entries(metrics)) {
    const key = Buffer.from(name);
    const double = Buffer.alloc(8);
    double.writeDoubleLE(value);
    const entry = Buffer.concat([Buffer.from([0x0a, key.length]), key, Buffer.from([0x11]), double]);
    parts.push(Buffer.from([(8 << 3) | 2, entry.length]), entry);
  }
  return Buffer.concat([Buffer.from([0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]), ...parts]); // field 1 skipped
}
