/**
 * What a worker says about itself in the trailing metadata of every response.
 *
 * - `tms-load-bin`: an ORCA load report (xds.data.orca.v3.OrcaLoadReport) whose
 *   `named_metrics` (field 8, map<string, double>) hold `in_flight` and `queued`, and after a
 *   reload `reload`, the number of the server's last reload the worker has done
 *   (GetWorkerInfoResponse.reload);
 * - `tms-worker`: `<instance id>/<pid>`, which worker answered.
 *
 * Only named_metrics is read; other fields are skipped, as protobuf would.
 */
import type { Metadata } from "@grpc/grpc-js";

export const LOAD_KEY = "tms-load-bin";
export const WORKER_KEY = "tms-worker";

/** A worker's load as it last reported it; `received` is a performance.now() time. */
export interface LoadReport {
  inFlight: number;
  queued: number;
  /** The server's last reload the worker has done (0: none, or a server that does not say). */
  reload: number;
  received: number;
}

function varint(data: Uint8Array, pos: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= data.length) throw new RangeError("varint runs past the end of the load report");
    const byte = data[pos++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

/** The named metrics of an OrcaLoadReport. */
export function decodeOrca(data: Uint8Array): Map<string, number> {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const metrics = new Map<string, number>();
  let pos = 0;
  while (pos < data.length) {
    let key: number;
    [key, pos] = varint(data, pos);
    const wireType = key & 7;
    if (wireType === 2) {
      let length: number;
      [length, pos] = varint(data, pos);
      const end = pos + length;
      if (end > data.length) throw new RangeError("field runs past the end of the load report");
      if (key >>> 3 === 8) {
        let name = "";
        let value = 0;
        let at = pos;
        while (at < end) {
          let entryKey: number;
          [entryKey, at] = varint(data, at);
          if (entryKey === 0x0a) {
            let n: number;
            [n, at] = varint(data, at);
            name = Buffer.from(data.subarray(at, at + n)).toString("utf8");
            at += n;
          } else if (entryKey === 0x11) {
            value = view.getFloat64(at, true);
            at += 8;
          } else {
            throw new RangeError(`unexpected field in a named metric: key ${entryKey}`);
          }
        }
        metrics.set(name, value);
      }
      pos = end;
    } else if (wireType === 1) {
      pos += 8;
    } else if (wireType === 0) {
      [, pos] = varint(data, pos);
    } else if (wireType === 5) {
      pos += 4;
    } else {
      throw new RangeError(`unsupported wire type ${wireType}`);
    }
  }
  return metrics;
}

/** The worker identity and load report in a call's trailing metadata, where present. */
export function readTrailers(metadata: Metadata | undefined): { identity?: string; load?: LoadReport } {
  if (metadata === undefined) return {};
  const [identity] = metadata.get(WORKER_KEY);
  const [raw] = metadata.get(LOAD_KEY);
  let load: LoadReport | undefined;
  if (raw instanceof Uint8Array) {
    try {
      const metrics = decodeOrca(raw);
      load = {
        inFlight: metrics.get("in_flight") ?? 0,
        queued: metrics.get("queued") ?? 0,
        reload: metrics.get("reload") ?? 0,
        received: performance.now(),
      };
    } catch {
      load = undefined; // a malformed report is ignored
    }
  }
  return { identity: identity === undefined ? undefined : String(identity), load };
}
