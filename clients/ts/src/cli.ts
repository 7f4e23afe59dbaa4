/**
 * tms-ts: calls a TMS server with TmsClient; an example of its use, and what the polyglot tests
 * run. Same commands as the Go client's tms-go:
 *
 *   node dist/cli.js [--addr host:port] [--args JSON] models
 *   node dist/cli.js [--addr host:port] [--args JSON] run MODEL IMAGE_FILE
 *   node dist/cli.js [--addr host:port] [--args JSON] i2i MODEL IMAGE_FILE OUT_FILE
 *
 * run prints the model's JSON result; i2i writes the first output image's raw pixels to
 * OUT_FILE and prints its dtype, shape and colour order as JSON. Errors go to stderr as
 * "error: <gRPC code>: <message>", with exit status 1.
 */
import { readFile, writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { ColorOrder, DType, encodedImage, status, TmsClient, TmsError } from "./index.js";

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: {
      addr: { type: "string", default: "localhost:50051" },
      args: { type: "string" },
    },
    allowPositionals: true,
  });
  const args = values.args === undefined ? undefined : JSON.parse(values.args);
  const client = new TmsClient(values.addr ?? "localhost:50051");
  try {
    const [command, model, input, output] = positionals;
    if (command === "models" && positionals.length === 1) {
      for (const info of await client.listModels()) {
        console.log(info.name);
      }
    } else if (command === "run" && positionals.length === 3) {
      const result = await client.runImage(model, encodedImage(await readFile(input)), args);
      console.log(JSON.stringify(result));
    } else if (command === "i2i" && positionals.length === 4) {
      const out = await client.runImageToImage(model, encodedImage(await readFile(input)), args);
      const first = out.images[0];
      await writeFile(output, first.data);
      console.log(
        JSON.stringify({
          dtype: DType[first.dtype],
          shape: first.shape,
          color: ColorOrder[first.colorOrder],
          result: out.result,
        }),
      );
    } else {
      throw new Error("usage: tms-ts [--addr A] [--args JSON] models | run MODEL IMAGE | i2i MODEL IMAGE OUT");
    }
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  const code = error instanceof TmsError ? status[error.code] : "UNKNOWN";
  console.error(`error: ${code}: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
