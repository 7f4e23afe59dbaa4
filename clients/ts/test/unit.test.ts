/** Unit tests of the pieces with no I/O: load reports, images, balancers, retry, worker set. */
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:net";
import { describe, it } from "node:test";

import { Metadata, status } from "@grpc/grpc-js";

import { LeastLoaded, RoundRobin } from "../src/balancers.js";
import { ModelClient } from "../src/client.js";
import { TmsError } from "../src/errors.js";
import { DType, Encoding } from "../src/gen/tms/v1/image.js";
import { GetWorkerInfoResponse } from "../src/gen/tms/v1/model_service.js";
import { encodedImage, float16, type ImageInput, pixels, rawImage, toMessage } from "../src/images.js";
import { decodeOrca, readTrailers } from "../src/load.js";
import { Attempts, LONGEST_TIMEOUT_MS, RetryPolicy } from "../src/retry.js";
import { parseTargets, proxied, refused, resolveTargets } from "../src/targets.js";
import { Worker, WorkerSet } from "../src/workers.js";
import { detailsTrailers, orca } from "./details.js";

function info(pid: number, models: string[] = [], instanceId = "a", count = 2): GetWorkerInfoResponse {
  return GetWorkerInfoResponse.fromPartial({ instanceId, pid, workerIndex: pid % count, workerCount: count, device: "cpu", models });
}

describe("load reports", () => {
  it("decodes named metrics and skips other fields", () => {
    assert.deepEqual(decodeOrca(orca({ in_flight: 3, queued: 2 })), new Map([["in_flight", 3], ["queued", 2]]));
  });
  it("reads both trailers and ignores a malformed report", () => {
    const metadata = new Metadata();
    metadata.set("tms-worker", "abc/42");
    metadata.set("tms-load-bin", orca({ in_flight: 1, queued: 4 }));
    const { identity, load } = readTrailers(metadata);
    assert.equal(identity, "abc/42");
    assert.deepEqual([load?.inFlight, load?.queued], [1, 4]);
    assert.equal(load?.reload, 0); // no reload yet
    metadata.set("tms-load-bin", orca({ in_flight: 1, queued: 0, reload: 3 }));
    assert.equal(readTrailers(metadata).load?.reload, 3);
    const bad = new Metadata();
    bad.set("tms-load-bin", Buffer.from([0x42, 0xff]));
    assert.equal(readTrailers(bad).load, undefined);
  });
});

describe("images", () => {
  it("takes every dtype from its typed array, or as bytes with the dtype", () => {
    const cases: [ArrayBufferView & { length: number }, DType][] = [
      [new Uint8Array(4), DType.D_TYPE_UINT8],
      [new Int8Array(4), DType.D_TYPE_INT8],
      [new Uint16Array(4), DType.D_TYPE_UINT16],
      [new Int16Array(4), DType.D_TYPE_INT16],
      [new Int32Array(4), DType.D_TYPE_INT32],
      [new BigInt64Array(4), DType.D_TYPE_INT64],
      [new Float32Array(4), DType.D_TYPE_FLOAT32],
      [new Float64Array(4), DType.D_TYPE_FLOAT64],
    ];
    for (const [array, dtype] of cases) {
      const image = rawImage(array as never, [2, 2]);
      assert.equal(image.dtype, dtype);
      assert.equal(image.data.byteLength, array.byteLength);
      assert.equal(pixels(image).constructor, array.constructor);
    }
    assert.equal(rawImage(new Uint8Array([0, 1, 1, 0]), [2, 2], { dtype: DType.D_TYPE_BOOL }).dtype, DType.D_TYPE_BOOL);
    assert.equal(rawImage(new Uint16Array(4), [2, 2], { dtype: DType.D_TYPE_FLOAT16 }).data.byteLength, 8);
    assert.throws(() => rawImage(new Float32Array(3), [2, 2]), RangeError);
  });
  it("converts numbers to float16 bits, rounding to nearest even", () => {
    const values = [0, -0, 1, -2, 0.25, -8, 7.75, 65504, 65520, 1e-8, 2 ** -24, 2 ** -14, 1 + 2 ** -11, 1 + 3 * 2 ** -11, NaN];
    const bits = [0, 0x8000, 0x3c00, 0xc000, 0x3400, 0xc800, 0x47c0, 0x7bff, 0x7c00, 0, 1, 0x0400, 0x3c00, 0x3c02, 0x7e00];
    assert.deepEqual([...float16(values)], bits);
  });
  it("sends PNG and JPEG bytes as encoded images", () => {
    const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0]);
    assert.equal(toMessage(png).encoding, Encoding.ENCODING_PNG);
    assert.equal(toMessage(Buffer.from([0xff, 0xd8, 0xff, 0xe0])).encoding, Encoding.ENCODING_JPEG);
    assert.throws(() => encodedImage(Buffer.from("GIF89a")), TypeError);
  });
  it("says what was passed when it is no image", () => {
    const cases: [unknown, string][] = [[{}, "Object"], [42, "number"], [null, "null"], [new Float32Array(4), "Float32Array"]];
    for (const [value, kind] of cases) {
      const message = `cannot send ${kind} as an image; pass rawImage(pixels, shape), encodedImage(file) or the bytes of a PNG or JPEG file`;
      assert.throws(() => toMessage(value as ImageInput), { name: "TypeError", message });
    }
  });
  it("reads pixels at an unaligned offset", () => {
    const bytes = new Uint8Array(9);
    new DataView(bytes.buffer).setFloat64(1, 2.5, true);
    const image = { data: bytes.subarray(1), shape: [1, 1], dtype: DType.D_TYPE_FLOAT64, colorOrder: 0, encoding: Encoding.ENCODING_RAW };
    assert.deepEqual([...(pixels(image) as Float64Array)], [2.5]);
  });
});

describe("balancers", () => {
  const worker = (inFlight: number, latencyMs = 1) => ({ inFlight, load: undefined, latencyMs });
  it("round-robin takes each in turn", () => {
    const balancer = new RoundRobin();
    const workers = [worker(0), worker(0), worker(0)];
    assert.deepEqual([0, 1, 2, 3].map(() => workers.indexOf(balancer.pick(workers))), [0, 1, 2, 0]);
  });
  it("least-loaded prefers the less loaded of two, counting reported load", () => {
    const balancer = new LeastLoaded();
    const idle = worker(0);
    const busy = worker(5);
    for (let i = 0; i < 20; i++) assert.equal(balancer.pick([busy, idle]), idle);
    const reported = { inFlight: 0, load: { inFlight: 9, queued: 3, reload: 0, received: performance.now() }, latencyMs: 1 };
    for (let i = 0; i < 20; i++) assert.equal(balancer.pick([reported, busy]), busy);
  });
  it("least-loaded tries again a worker whose latency faded (one that timed out 40 s ago)", () => {
    let now = 0;
    const stopped = new Worker("h:1", info(10), null, () => now);
    const fast = new Worker("h:1", info(11), null, () => now);
    stopped.recordLatency(500, 0); // a 0.5 s call that timed out
    fast.recordLatency(10, 30_000);
    now = 30_000; // 500 ms * exp(-3) = 24.9 ms: still the slower
    const balancer = new LeastLoaded();
    for (let i = 0; i < 20; i++) assert.equal(balancer.pick([stopped, fast]), fast);
    fast.recordLatency(10, 40_000);
    now = 40_000; // 500 ms * exp(-4) = 9.2 ms < 10 ms
    for (let i = 0; i < 20; i++) assert.equal(balancer.pick([stopped, fast]), stopped);
  });
});

describe("worker latency", () => {
  const near = (actual: number, expected: number) =>
    assert.ok(Math.abs(actual - expected) < 1e-6, `${actual} is not ${expected}`);
  it("fades with the time since it was recorded", () => {
    let now = 0;
    const worker = new Worker("h:1", info(10), null, () => now);
    assert.equal(worker.latencyMs, 0); // nothing answered yet
    worker.recordLatency(500, 1_000);
    now = 1_000;
    assert.equal(worker.latencyMs, 500);
    now = 31_000;
    assert.ok(worker.latencyMs > 0 && worker.latencyMs < 30, `${worker.latencyMs} ms after 30 s`);
    near(worker.latencyMs, 500 * Math.exp(-3));
  });
  it("takes a sample in starting from the faded latency", () => {
    let now = 0;
    const worker = new Worker("h:1", info(10), null, () => now);
    worker.recordLatency(500, 0);
    worker.recordLatency(400, 3_000); // above 500 ms * exp(-0.3) = 370 ms: counts at once
    now = 3_000;
    assert.equal(worker.latencyMs, 400);
    const faster = new Worker("h:1", info(11), null, () => now);
    faster.recordLatency(500, 1_000);
    faster.recordLatency(10, 3_000); // below: pulls the faded 409 ms down with weight 1 - exp(-2)
    const faded = 500 * Math.exp(-0.2);
    near(faster.latencyMs, faded + (10 - faded) * (1 - Math.exp(-2)));
    const idle = new Worker("h:1", info(12), null, () => now);
    idle.recordLatency(500, 0);
    idle.recordLatency(100, 40_000); // after a long gap: 100 ms, fading from now on
    now = 40_000;
    near(idle.latencyMs, 100);
    now = 50_000;
    near(idle.latencyMs, 100 * Math.exp(-1));
  });
});

describe("errors", () => {
  it("expose the server's ErrorInfo, BadRequest and RetryInfo", () => {
    const trailers = detailsTrailers(status.INVALID_ARGUMENT, {
      reason: "INVALID_ARGS",
      metadata: { model: "face" },
      fields: ["args_json", "args_json.label"],
      retryDelayMs: 1_500,
    });
    const error = new TmsError(status.INVALID_ARGUMENT, "bad args", trailers);
    assert.equal(error.reason, "INVALID_ARGS");
    assert.equal(error.domain, "tms");
    assert.deepEqual(error.errorMetadata, { model: "face" });
    assert.deepEqual(error.fieldViolations.map((v) => v.field), ["args_json", "args_json.label"]);
    assert.equal(error.fieldViolations[0].description, "bad args_json");
    assert.equal(error.retryDelayMs, 1_500);
  });
  it("have empty details when the status carries none or malformed ones", () => {
    const bare = new TmsError(status.INTERNAL, "x");
    assert.deepEqual([bare.reason, bare.domain, bare.errorMetadata, bare.fieldViolations, bare.retryDelayMs], ["", "", {}, [], undefined]);
    const bad = new Metadata();
    bad.set("grpc-status-details-bin", Buffer.from([0x1a, 0xff]));
    assert.equal(new TmsError(status.INTERNAL, "x", bad).reason, "");
    const noReason = new TmsError(status.UNAVAILABLE, "x", detailsTrailers(status.UNAVAILABLE, { retryDelayMs: 0 }));
    assert.deepEqual([noReason.reason, noReason.retryDelayMs], ["", 0]);
  });
  it("are read from a serialized google.rpc.Status, as a stream's frame carries one", () => {
    const [bytes] = detailsTrailers(status.INVALID_ARGUMENT, { reason: "IMAGE_TOO_LARGE", fields: ["image"] }).get("grpc-status-details-bin");
    const error = TmsError.fromStatus(bytes as Buffer);
    assert.deepEqual([error.code, error.details, error.reason], [status.INVALID_ARGUMENT, "m", "IMAGE_TOO_LARGE"]);
    assert.deepEqual(error.fieldViolations.map((v) => v.field), ["image"]);
    assert.equal(TmsError.fromStatus(Buffer.from([0x1a, 0xff])).code, status.UNKNOWN);
  });
});

describe("retry", () => {
  it("is an immutable value with copies", () => {
    const policy = RetryPolicy.default();
    assert.equal(policy.withAttempts(9).attempts, 9);
    assert.equal(policy.attempts, 5);
    assert.throws(() => RetryPolicy.never().withJitter(2), RangeError);
    const backoff = policy.withJitter(0).withBackoff(10, 50);
    assert.deepEqual([1, 2, 3, 4].map((n) => backoff.backoffMs(n)), [10, 20, 40, 50]);
  });
  it("retries only the codes it names, within attempts and deadline", () => {
    let now = 0;
    const attempts = new Attempts(RetryPolicy.default().withAttempts(2), 1_000, () => now);
    attempts.begin();
    assert.throws(() => attempts.delayAfter(new TmsError(status.NOT_FOUND, "x")), TmsError);
    assert.ok(attempts.delayAfter(new TmsError(status.UNAVAILABLE, "x")) > 0);
    attempts.begin();
    assert.throws(() => attempts.delayAfter(new TmsError(status.CANCELLED, "x")), TmsError);
    now = 2_000;
    assert.throws(() => attempts.begin(), (e: TmsError) => e.code === status.DEADLINE_EXCEEDED);
  });
  it("retries any code with RetryInfo after its delay, within attempts and deadline", () => {
    let now = 0;
    const queueFull = (ms: number) =>
      new TmsError(status.RESOURCE_EXHAUSTED, "full", detailsTrailers(status.RESOURCE_EXHAUSTED, { reason: "QUEUE_FULL", retryDelayMs: ms }));
    const attempts = new Attempts(RetryPolicy.default().withAttempts(3), 1_000, () => now);
    attempts.begin();
    assert.equal(attempts.delayAfter(queueFull(100)), 100);
    assert.throws(() => attempts.delayAfter(new TmsError(status.RESOURCE_EXHAUSTED, "too large")), TmsError);
    assert.throws(() => attempts.delayAfter(queueFull(1_000)), TmsError); // past the deadline
    attempts.begin();
    assert.equal(attempts.delayAfter(queueFull(0)), 0);
    attempts.begin();
    assert.throws(() => attempts.delayAfter(queueFull(0)), TmsError); // attempts used up
    assert.equal(RetryPolicy.default().retries(status.INVALID_ARGUMENT, 0), true);
    const never = new Attempts(RetryPolicy.never(), null);
    never.begin();
    assert.throws(() => never.delayAfter(queueFull(0)), TmsError);
  });
  it("gives no deadline from LONGEST_TIMEOUT_MS on, as grpc-js takes none further off", () => {
    for (const timeoutMs of [null, LONGEST_TIMEOUT_MS, 1e15, Number.MAX_SAFE_INTEGER, Infinity]) {
      assert.equal(new Attempts(RetryPolicy.default(), timeoutMs).wallDeadline(), Infinity, String(timeoutMs));
    }
    const longest = new Attempts(RetryPolicy.default(), LONGEST_TIMEOUT_MS - 1).wallDeadline();
    assert.ok(Math.abs(longest - (Date.now() + LONGEST_TIMEOUT_MS)) < 1_000);
  });
  it("refuses a connect timeout from LONGEST_TIMEOUT_MS on, as the Python client does", () => {
    for (const connectTimeoutMs of [LONGEST_TIMEOUT_MS, 1e15, Infinity]) {
      assert.throws(() => new ModelClient("m", "localhost:1", { connectTimeoutMs }), /connectTimeoutMs must be below/);
    }
    new ModelClient("m", "localhost:1", { connectTimeoutMs: LONGEST_TIMEOUT_MS - 1 }).close();
  });
});

describe("worker set", () => {
  it("knows when a server's workers are all found, and routes by model", () => {
    const set = new WorkerSet<null>();
    const a = new Worker("h:1", info(10, ["face"]), null);
    const b = new Worker("h:1", info(11, ["face", "edges"]), null);
    assert.deepEqual(set.add(a), []);
    assert.equal(set.complete("h:1"), false);
    assert.deepEqual(set.add(new Worker("h:1", info(10), null)).length, 1); // a duplicate
    set.add(b);
    assert.equal(set.complete("h:1"), true);
    assert.deepEqual(set.candidates(new Set(), "edges"), [b]);
    assert.deepEqual(set.candidates(new Set([b.key]), "edges"), [b]); // tried, but the only one
    assert.equal(set.candidates(new Set(), "nothing").length, 2);
    assert.match(String(set), /h:1 pid 10: 0 in flight, 0 calls, h:1 pid 11/);
  });
  it("takes in the models a worker serves after a reload, from that worker only", () => {
    const set = new WorkerSet<null>();
    const a = new Worker("h:1", info(10, ["face"]), null);
    set.add(a);
    set.add(new Worker("h:1", info(11, ["face", "edges"]), null));
    assert.equal(set.follow(a, GetWorkerInfoResponse.fromPartial({ ...info(10, ["face", "edges"]), reload: 2 })), true);
    assert.deepEqual([a.reload, set.candidates(new Set(), "edges").length], [2, 2]);
    assert.equal(set.follow(a, info(12, [])), false); // another process answered
    assert.deepEqual([a.info.pid, a.describe().models], [10, ["face", "edges"]]);
  });
  it("replaces the workers of a server that restarted", () => {
    const set = new WorkerSet<null>();
    const old = new Worker("h:1", info(10, [], "old"), null);
    set.add(old);
    assert.deepEqual(set.add(new Worker("h:1", info(20, [], "new"), null)), [old]);
    assert.equal(set.size, 1);
  });
});

describe("targets", () => {
  it("checks targets and resolves dns:/// names", async () => {
    assert.throws(() => parseTargets("localhost"), TypeError);
    assert.throws(() => parseTargets([]), TypeError);
    // "h1:p1,h2:p2" passed for a host "h1:p1,h2" that never resolves: the client waited the
    // whole connect timeout, then said it could not reach that "server".
    const several = "127.0.0.1:50051,127.0.0.1:50052";
    for (const target of [several, [several], `dns:///${several}`]) {
      const item = typeof target === "string" ? target : target[0]!;
      assert.throws(() => parseTargets(target), {
        name: "TypeError",
        message:
          `target ${JSON.stringify(item)} is several addresses in one string; give one 'host:port', ` +
          `a list of them (["10.0.0.1:50051", "10.0.0.2:50051"]), or 'dns:///name:port' for ` +
          "every address a name resolves to",
      });
    }
    // "http://h:p" passed for a host "http://h" that never resolves, as "h1:p1,h2:p2" did.
    for (const [url, example] of [
      ["http://localhost:50051", "localhost:50051"],
      ["https://gpu-box/", "gpu-box:50051"],
      ["dns:///grpc://svc:7", "svc:7"],
    ]) {
      assert.throws(() => parseTargets([url!]), {
        name: "TypeError",
        message:
          `target ${JSON.stringify(url)} is a URL; give 'host:port' (e.g. ${JSON.stringify(example)}) or ` +
          "'dns:///host:port', with no scheme",
      });
    }
    assert.deepEqual(await resolveTargets(["10.0.0.1:5", "dns:///127.0.0.1:7"]), ["10.0.0.1:5", "127.0.0.1:7"]);
    assert.deepEqual(await resolveTargets(["dns:///no-such-host.invalid:1"]), []);
  });
  it("tells an address that refuses connections from one that takes them", async () => {
    const server = createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as { port: number };
    assert.equal(await refused(`127.0.0.1:${port}`, 2_000), false);
    server.close();
    await once(server, "close");
    assert.equal(await refused(`127.0.0.1:${port}`, 2_000), true);
    assert.equal(await refused(`127.0.0.1:${port}`, 2_000, AbortSignal.abort()), false);
  });
  it("knows when grpc-js goes through a proxy, as its environment says", () => {
    assert.equal(proxied("10.1.2.3", {}), false);
    assert.equal(proxied("10.1.2.3", { https_proxy: "http://proxy:3128" }), true);
    assert.equal(proxied("10.1.2.3", { http_proxy: "http://proxy:3128", no_proxy: "localhost,10.0.0.0/8" }), false);
    assert.equal(proxied("tms.internal", { grpc_proxy: "proxy:3128", no_proxy: ".internal" }), false);
    const env = { grpc_proxy: "proxy:3128", no_grpc_proxy: "192.168.0.0/16", no_proxy: "10.0.0.0/8" };
    assert.equal(proxied("10.1.2.3", env), true); // no_grpc_proxy first
    assert.equal(proxied("192.168.7.1", env), false);
  });
});
