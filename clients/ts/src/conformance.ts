/**
 * The TypeScript client's conformance runner: runs every vector of a vectors file against a
 * live server with ModelClient and prints one JSON line per vector, `{"name", "outcome"}`, in
 * file order (tests/conformance/README.md defines both; the other clients' runners print the
 * same lines for the same server). Not part of the package.
 *
 *   node dist/conformance.js --target HOST:PORT --vectors tests/conformance/vectors.json [--connect-timeout S]
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";

import {
  type Args,
  ColorOrder,
  DType,
  encodedImage,
  float16,
  type Image,
  ModelClient,
  rawImage,
  status,
  TmsError,
} from "./index.js";

/** One entry of vectors.json (its `expect` is the test's business, not the runner's). */
interface Vector {
  name: string;
  call: string;
  model?: string;
  images?: ImageSpec[];
  texts?: string[];
  args?: Args;
  repeat?: number;
}

type ImageSpec = { generate: { dtype: string; shape: number[] }; color_order: string } | { file: string };

/** The bytes of element i of a generated image (README.md, "Pixels"), little-endian. */
const FORMULAS: Record<string, [size: number, write: (view: DataView, at: number, i: number) => void]> = {
  uint8: [1, (v, at, i) => v.setUint8(at, i % 251)],
  int8: [1, (v, at, i) => v.setInt8(at, (i % 251) - 125)],
  uint16: [2, (v, at, i) => v.setUint16(at, (i * 257) % 65536, true)],
  int16: [2, (v, at, i) => v.setInt16(at, ((i * 257) % 65536) - 32768, true)],
  int32: [4, (v, at, i) => v.setInt32(at, i * 65537 - 1000000, true)],
  int64: [8, (v, at, i) => v.setBigInt64(at, BigInt(i) * 4294967311n - 1099511627776n, true)],
  float16: [2, (v, at, i) => v.setUint16(at, float16([(i % 64) * 0.25 - 8])[0], true)],
  float32: [4, (v, at, i) => v.setFloat32(at, i * 0.25 - 8, true)],
  float64: [8, (v, at, i) => v.setFloat64(at, i * 0.125 - 16, true)],
  bool: [1, (v, at, i) => v.setUint8(at, i % 3 === 0 ? 1 : 0)],
};

/** The pixels a vector's `generate` names, as an image of that dtype and colour order. */
function generate(dtype: string, shape: number[], color: string): Image {
  const [size, write] = FORMULAS[dtype];
  const count = shape.reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(count * size);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < count; i++) write(view, i * size, i);
  const dtypeValue = DType[`D_TYPE_${dtype.toUpperCase()}` as keyof typeof DType];
  const colorValue = ColorOrder[`COLOR_ORDER_${color}` as keyof typeof ColorOrder];
  return rawImage(bytes, shape, { dtype: dtypeValue, color: colorValue });
}

async function image(spec: ImageSpec, folder: string): Promise<Image> {
  if ("file" in spec) return encodedImage(await readFile(join(folder, spec.file)));
  return generate(spec.generate.dtype, spec.generate.shape, spec.color_order);
}

function parse(text: string): unknown {
  return text === "" ? null : JSON.parse(text);
}

async function run(client: ModelClient, vector: Vector, folder: string): Promise<unknown> {
  const { call, args } = vector;
  const texts = vector.texts ?? [];
  switch (call) {
    case "Health":
      return { health: await client.health() };
    case "ListModels":
      return {
        models: (await client.listModels()).map((info) => info.name),
        failed: await client.failedModels(),
      };
    case "GetModelInfo": {
      const info = await client.info();
      const model = { name: info.name, version: info.version, max_batch_size: info.maxBatchSize };
      const delay = info.maxBatchDelay; // seconds, null when the model does not batch
      const max_batch_delay = delay ? delay.seconds + delay.nanos / 1e9 : null;
      return { model: { ...model, max_batch_delay, args_schema: parse(info.argsSchemaJson) } };
    }
    case "RunText":
      return { result: await client.runText(texts[0], args) };
    case "RunTextBatch":
      return { results: await client.runTexts(texts, args) };
  }
  const images = await Promise.all((vector.images ?? []).map((spec) => image(spec, folder)));
  switch (call) {
    case "RunImage":
      return { result: await client.runImage(images[0], args) };
    case "RunImageBatch":
      return { results: await client.runImages(images, args) };
    case "RunImageToImage": {
      const answer = await client.runImageToImage(images, args);
      const outputs = answer.images.map((output) => ({
        dtype: DType[output.dtype].replace(/^D_TYPE_/, "").toLowerCase(),
        shape: output.shape,
        color_order: ColorOrder[output.colorOrder].replace(/^COLOR_ORDER_/, ""),
        sha256: createHash("sha256").update(output.data).digest("hex"),
      }));
      return { images: outputs, result: answer.result };
    }
    case "RunImageStream": {
      const frames = [];
      for await (const answer of client.runImageStream(images, args, { errors: "yield" })) {
        frames.push(answer.error === undefined ? { result: answer.result } : errorOutcome(answer.error));
      }
      return { frames };
    }
  }
  throw new TypeError(`unknown call ${JSON.stringify(call)}`);
}

/** The outcome of a failed call (or of a failed frame of a stream). */
function errorOutcome(error: TmsError): { error: unknown } {
  const field_violations = error.fieldViolations.map((violation) => violation.field);
  return { error: { code: status[error.code], reason: error.reason, field_violations } };
}

async function outcome(target: string, vector: Vector, folder: string, connectTimeoutMs: number): Promise<unknown> {
  const client = new ModelClient(vector.model ?? "", target, { timeoutMs: 30_000, connectTimeoutMs });
  try {
    const first = await attempt(client, vector, folder);
    for (let i = 1; i < (vector.repeat ?? 1); i++) {
      const other = await attempt(client, vector, folder);
      if (JSON.stringify(other) !== JSON.stringify(first)) return other; // the first that differs
    }
    return first;
  } finally {
    client.close();
  }
}

/** The outcome of making the vector's call once. */
async function attempt(client: ModelClient, vector: Vector, folder: string): Promise<unknown> {
  try {
    return await run(client, vector, folder);
  } catch (error) {
    if (!(error instanceof TmsError)) throw error;
    return errorOutcome(error);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { target: { type: "string" }, vectors: { type: "string" }, "connect-timeout": { type: "string" } },
  });
  const connectTimeoutMs = Number(values["connect-timeout"] ?? "10") * 1000;
  if (values.target === undefined || values.vectors === undefined || !(connectTimeoutMs > 0)) {
    throw new TypeError("usage: node dist/conformance.js --target HOST:PORT --vectors FILE [--connect-timeout S]");
  }
  const { vectors } = JSON.parse(await readFile(values.vectors, "utf8")) as { vectors: Vector[] };
  for (const vector of vectors) {
    const found = await outcome(values.target, vector, dirname(values.vectors), connectTimeoutMs);
    const line = { name: vector.name, outcome: found };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  }
}

await main();
