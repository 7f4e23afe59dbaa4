/**
 * tms-ts: calls a TMS server with ModelClient; an example of its use, and what the polyglot
 * tests run. Same commands as the Go client's tms-go, and `workers`:
 *
 *   node dist/cli.js [--addr host:port] [--token T] [--args JSON] models
 *   node dist/cli.js [--addr host:port] [--token T] [--args JSON] run MODEL IMAGE_FILE
 *   node dist/cli.js [--addr host:port] [--token T] [--args JSON] i2i MODEL IMAGE_FILE OUT_FILE
 *   node dist/cli.js [--addr host:port] [--token T] workers
 *
 * run prints the model's JSON result; i2i writes the first output image's raw pixels to
 * OUT_FILE and prints its dtype, shape and colour order as JSON; workers prints the worker
 * processes found as JSON. Errors go to stderr as "error: <gRPC code>: <message>", with exit
 * status 1.
 */
import { readFile, writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { ColorOrder, DType, ModelClient, status, TmsError } from "./index.js";

const USAGE =
  "usage: tms-ts [--addr A] [--token T] [--args JSON] models | workers | run MODEL IMAGE | i2i MODEL IMAGE OUT";

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: {
      addr: { type: "string", default: "localhost:50051" },
      args: { type: "string" },
      token: { type: "string" },
    },
    allowPositionals: true,
  });
  const args = values.args === undefined ? undefined : JSON.parse(values.args);
  const [command, model, input, output] = positionals;
  const known = { models: 1, workers: 1, run: 3, i2i: 4 }[command];
  if (known !== positionals.length) throw new Error(USAGE);
  const client = new ModelClient(known > 1 ? model : "", values.addr ?? "localhost:50051", { token: values.token });
  try {
    if (command === "models") {
      for (const info of await client.listModels()) console.log(info.name);
    } else if (command === "workers") {
      await client.start();
      console.log(JSON.stringify(client.workers()));
    } else if (command === "run") {
      console.log(JSON.stringify(await client.runImage(await readFile(input), args)));
    } else {
      const out = await client.runImageToImage(await readFile(input), args);
      const first = out.images[0];
      await writeFile(output, first.data);
      const color = ColorOrder[first.colorOrder];
      console.log(JSON.stringify({ dtype: DType[first.dtype], shape: first.shape, color, result: out.result }));
    }
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  const code = error instanceof TmsError ? status[error.code] : "UNKNOWN";
  const message = error instanceof TmsError ? error.details : error instanceof Error ? error.message : String(error);
  console.error(`error: ${code}: ${message}`);
  process.exitCode = 1;
});
