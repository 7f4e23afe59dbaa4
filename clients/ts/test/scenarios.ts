/**
 * Scenarios against a real server, run by tests/test_ts_sdk.py:
 *
 *   node build-test/test/scenarios.js SCENARIO TARGET [JSON settings]
 *
 * Each prints one line of JSON (load prints "started" first, when its calls are running;
 * follow prints "ready", then waits for a line on stdin; closing prints "closed" when it has
 * closed its client).
 */
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";

import {
  DType,
  type ImageInput,
  LeastLoaded,
  ModelClient,
  type ModelInfo,
  pixels,
  rawImage,
  RoundRobin,
  status,
  TmsError,
} from "../src/index.js";

type Settings = Record<string, unknown>;
const [scenario, target, raw] = process.argv.slice(2);
const settings: Settings = raw ? JSON.parse(raw) : {};
const tiny = rawImage(new Uint8Array([1, 2, 3, 4]), [2, 2]);

function describeError(error: unknown): Record<string, unknown> {
  if (error instanceof TmsError) return { name: error.name, code: status[error.code], details: error.details, typed: true };
  return { name: (error as Error)?.name, message: String(error), typed: false };
}

/** Calls from `concurrency` callers for `seconds`; the pids that answered. */
async function spread(): Promise<unknown> {
  const balancer = settings.balancer === "round-robin" ? new RoundRobin() : new LeastLoaded();
  const client = new ModelClient(String(settings.model ?? "whoami"), target, { balancer });
  try {
    await client.start();
    const pids = new Set<number>();
    for (let round = 0; round < Number(settings.rounds ?? 10); round++) {
      const calls = Array.from({ length: Number(settings.concurrency ?? 6) }, () =>
        client.runImage(tiny, { sleep: settings.sleep ?? 0.02 }),
      );
      for (const result of (await Promise.all(calls)) as { pid: number }[]) pids.add(result.pid);
    }
    return { pids: [...pids], workers: client.workers().map((w) => w.pid) };
  } finally {
    client.close();
  }
}

/** Calls in a loop until `seconds` have passed; every failure counted. */
async function load(): Promise<unknown> {
  const client = new ModelClient("whoami", target, { refreshIntervalMs: 500 });
  await client.start();
  const stop = performance.now() + Number(settings.seconds ?? 4) * 1_000;
  const pids = new Set<number>();
  const errors: unknown[] = [];
  let ok = 0;
  let announced = false;
  const caller = async (): Promise<void> => {
    while (performance.now() < stop) {
      try {
        const result = (await client.runImage(tiny, { sleep: settings.sleep ?? 0.05 })) as { pid: number };
        pids.add(result.pid);
        ok += 1;
        if (!announced && ok >= 10) {
          announced = true;
          console.log("started");
        }
      } catch (error) {
        errors.push(describeError(error));
      }
    }
  };
  await Promise.all(Array.from({ length: Number(settings.concurrency ?? 6) }, caller));
  const workers = client.workers().map((w) => w.pid);
  client.close();
  return { ok, failed: errors.length, errors: errors.slice(0, 5), pids: [...pids], workers };
}

/** A refused token: how the first call fails, and how soon. */
async function auth(): Promise<unknown> {
  const client = new ModelClient("echo", target, { token: String(settings.token), connectTimeoutMs: 10_000 });
  const started = performance.now();
  try {
    await client.runText("hi");
    return { error: null };
  } catch (error) {
    return { error: describeError(error), ms: performance.now() - started };
  } finally {
    client.close();
  }
}

/** Every RPC and every dtype, over TLS and with a token when the settings say so. */
async function all(): Promise<unknown> {
  const options = {
    token: settings.token as string | undefined,
    tls: settings.ca === undefined ? undefined : { ca: String(settings.ca) },
  };
  const client = new ModelClient("whoami", target, options);
  const text = new ModelClient("echo", target, options);
  const i2i = new ModelClient("negate", target, options);
  try {
    const images = {
      uint8: rawImage(new Uint8Array([1, 2, 3, 4]), [2, 2]),
      int8: rawImage(new Int8Array([-1, 2, -3, 4]), [2, 2]),
      uint16: rawImage(new Uint16Array([1000, 2, 3, 4]), [2, 2]),
      int16: rawImage(new Int16Array([-1000, 2, 3, 4]), [2, 2]),
      int32: rawImage(new Int32Array([-100000, 2, 3, 4]), [2, 2]),
      int64: rawImage(new BigInt64Array([-5n, 2n, 3n, 4n]), [2, 2]),
      float16: rawImage(new Uint16Array([0x3c00, 0x4000, 0x4200, 0x4400]), [2, 2], { dtype: DType.D_TYPE_FLOAT16 }),
      float32: rawImage(new Float32Array([0.5, 1.5, 2, 3]), [2, 2]),
      float64: rawImage(new Float64Array([0.25, 1, 2, 3]), [2, 2]),
      bool: rawImage(new Uint8Array([1, 0, 1, 1]), [2, 2], { dtype: DType.D_TYPE_BOOL }),
      rgb: rawImage(new Uint8Array(2 * 2 * 3).fill(7), [2, 2, 3]),
    };
    const dtypes: Record<string, unknown> = {};
    for (const [name, image] of Object.entries(images)) dtypes[name] = await client.runImage(image);
    const batch = await client.runImages([images.uint8, images.float32]);
    const png = await client.runImage(await readFile(String(settings.png)));
    const negated = await i2i.runImageToImage(images.float32);
    const negatedPng = await i2i.runImageToImage(images.uint8, undefined, { png: true });
    const models = (await client.listModels()).map((m: ModelInfo) => m.name);
    const info = await client.info();
    return {
      dtypes,
      batch,
      png,
      i2i: { pixels: [...(pixels(negated.images[0]) as Float32Array)], dtype: DType[negated.images[0].dtype], result: negated.result },
      i2iPngMagic: [...negatedPng.images[0].data.subarray(1, 4)].map((c) => String.fromCharCode(c)).join(""),
      text: await text.runText("hi", { loud: true }),
      texts: await text.runTexts(["a", "b"]),
      models,
      info: { name: info.name, threadSafe: info.threadSafe },
      health: [await client.health(), await client.health(""), await client.health("no_such_model")],
      notFound: await new ModelClient("no_such_model", target, options).runImage(tiny).then(
        () => null,
        (e) => describeError(e),
      ),
      workers: client.workers().length,
    };
  } finally {
    client.close();
    text.close();
    i2i.close();
  }
}

/** Calls to a model placed on some workers only reach those; dns:/// targets work. */
async function placed(): Promise<unknown> {
  const client = new ModelClient(String(settings.model), target, { balancer: new RoundRobin() });
  try {
    const pids = new Set<number>();
    for (let i = 0; i < 12; i++) pids.add(((await client.runImage(tiny)) as { pid: number }).pid);
    return { pids: [...pids], workers: client.workers().map((w) => ({ pid: w.pid, models: w.models })) };
  } finally {
    client.close();
  }
}

/** An aborted call rejects with the signal's reason, at once, and is not retried. */
async function abort(): Promise<unknown> {
  const client = new ModelClient("whoami", target);
  try {
    await client.start();
    const controller = new AbortController();
    const started = performance.now();
    const call = client.runImage(tiny, { sleep: 3 }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 200);
    const error = await call.then(
      () => null,
      (e: unknown) => ({ name: (e as Error).name, ms: performance.now() - started }),
    );
    const deadline = await client.runImage(tiny, { sleep: 3 }, { timeoutMs: 300 }).then(() => null, describeError);
    return { error, deadline };
  } finally {
    client.close();
  }
}

/** Timeouts further off than grpc-js takes, of the client, a call and a stream: no deadline, as
 * Infinity is; and a call's timeoutMs of NaN. */
async function timeouts(): Promise<unknown> {
  const client = new ModelClient("whoami", target, { timeoutMs: 1e15 });
  const ended = (work: Promise<unknown>): Promise<unknown> => work.then(() => "answered", describeError);
  const stream = async (): Promise<void> => {
    for await (const frame of client.runImageStream([tiny], undefined, { timeoutMs: 1e15 })) void frame;
  };
  try {
    return {
      client: await ended(client.runImage(tiny)),
      call: await ended(client.runImage(tiny, undefined, { timeoutMs: Number.MAX_SAFE_INTEGER })),
      stream: await ended(stream()),
      nan: await ended(client.runImage(tiny, undefined, { timeoutMs: NaN })),
    };
  } finally {
    client.close();
  }
}

/** Streams whose frames throw, or yield what is no image, after three frames of a model that
 * answers each in 0.3 s: the answers yielded, and what was thrown. */
async function sourceError(): Promise<unknown> {
  const client = new ModelClient("whoami", target);
  async function* camera(): AsyncGenerator<ImageInput> {
    for (let i = 0; i < 3; i++) yield tiny;
    throw new Error("camera unplugged");
  }
  const run = async (frames: AsyncIterable<ImageInput> | ImageInput[]): Promise<unknown> => {
    const answered: number[] = [];
    try {
      for await (const answer of client.runImageStream(frames, { sleep: 0.3 })) answered.push(answer.frameId);
      return { answered, error: null };
    } catch (error) {
      return { answered, error: describeError(error) };
    }
  };
  try {
    return { throws: await run(camera()), noImage: await run([tiny, tiny, tiny, 42 as unknown as ImageInput]) };
  } finally {
    client.close();
  }
}

/** start() where no server answers: a ConnectError, and how soon. */
async function nobody(): Promise<unknown> {
  const client = new ModelClient("whoami", target, { connectTimeoutMs: Number(settings.connectTimeoutMs ?? 500) });
  const started = performance.now();
  try {
    await client.start();
    return { error: null };
  } catch (error) {
    return { error: describeError(error), name: (error as Error).name, ms: performance.now() - started };
  } finally {
    client.close();
  }
}

/** Calls to a model one worker of two has; once the test has reloaded it onto both (a line on
 * stdin), the same client's calls until they reach both (10 s at most). */
async function follow(): Promise<unknown> {
  const client = new ModelClient(String(settings.model), target, { balancer: new RoundRobin() });
  const pids = async (): Promise<number[]> => {
    const seen = new Set<number>();
    for (let i = 0; i < 10; i++) seen.add(((await client.runText("x")) as { pid: number }).pid);
    return [...seen];
  };
  try {
    await client.start();
    for (let i = 0; i < 200 && client.workers().length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    const before = await pids();
    console.log("ready");
    const input = createInterface({ input: process.stdin });
    await once(input, "line");
    input.close();
    let after = await pids();
    for (const stop = performance.now() + 10_000; after.length < 2 && performance.now() < stop; ) {
      await new Promise((r) => setTimeout(r, 50));
      after = await pids();
    }
    return { before, after, workers: client.workers().map((w) => ({ pid: w.pid, models: w.models })) };
  } finally {
    client.close();
  }
}

/** A client started at `targets` (TARGET and more), closed `waitMs` later while its background
 * search waits on a connection that is not answered; the process should end at once. */
async function closing(): Promise<unknown> {
  const targets = [target, ...((settings.more as string[] | undefined) ?? [])];
  const client = new ModelClient("whoami", targets, { connectTimeoutMs: Number(settings.connectTimeoutMs ?? 10_000) });
  await client.start();
  await new Promise((r) => setTimeout(r, Number(settings.waitMs ?? 1_000)));
  const workers = client.workers().length;
  client.close();
  console.log("closed");
  return { workers };
}

/** Calls and a stream of a model that answers in 3 s (the timeout is 30 s), in flight when the
 * client closes 300 ms after its start; then a call, a stream and a start on the closed client.
 * How each ended, and when: ms since close() for those in flight, since the first of the rest
 * began for the rest. */
async function close(): Promise<unknown> {
  const client = new ModelClient("whoami", target, { timeoutMs: 30_000 });
  await client.start();
  let since = 0;
  const ended = (work: Promise<unknown>): Promise<unknown> =>
    work.then(
      () => ({ answered: true, ms: performance.now() - since }),
      (error: unknown) => ({ ...describeError(error), ms: performance.now() - since }),
    );
  const stream = async (): Promise<void> => {
    for await (const frame of client.runImageStream([tiny, tiny], { sleep: 3 })) void frame;
  };
  const calls = Array.from({ length: Number(settings.calls ?? 4) }, () => ended(client.runImage(tiny, { sleep: 3 })));
  const streamed = ended(stream());
  await new Promise((r) => setTimeout(r, 300));
  since = performance.now();
  client.close();
  const inFlight = await Promise.all(calls);
  const streamInFlight = await streamed;
  since = performance.now();
  const after = {
    call: await ended(client.runImage(tiny)),
    stream: await ended(stream()),
    start: await ended(client.start()),
  };
  return { inFlight, stream: streamInFlight, after };
}

const scenarios: Record<string, () => Promise<unknown>> = {
  spread,
  load,
  auth,
  all,
  placed,
  abort,
  nobody,
  follow,
  closing,
  close,
  timeouts,
  sourceError,
};
const run = scenarios[scenario];
if (run === undefined) throw new Error(`no scenario ${scenario}`);
console.log(JSON.stringify(await run()));
