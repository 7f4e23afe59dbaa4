package io.tinymodelserver.tms.client;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import io.tinymodelserver.tms.v1.ColorOrder;
import io.tinymodelserver.tms.v1.DType;
import io.tinymodelserver.tms.v1.Image;
import io.tinymodelserver.tms.v1.ModelInfo;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;

/**
 * The Java client's conformance runner (tests/conformance/README.md): runs every vector of a
 * vectors file against a live server and prints one JSON line per vector, {@code {"name": ...,
 * "outcome": ...}}, in file order.
 *
 * <pre>
 * java -cp target/test-classes:target/classes:$(cat target/classpath.txt) \
 *     io.tinymodelserver.tms.client.Conformance --target HOST:PORT --vectors FILE [--connect-timeout S]
 * </pre>
 */
public final class Conformance {
  private static final Gson GSON =
      new GsonBuilder().serializeNulls().disableHtmlEscaping().create();

  private final TmsClient client;
  private final Path folder; // where a vector's "file" images are

  private Conformance(TmsClient client, Path folder) {
    this.client = client;
    this.folder = folder;
  }

  public static void main(String[] args) throws IOException {
    List<String> rest = List.of(args);
    int target = rest.indexOf("--target");
    int vectors = rest.indexOf("--vectors");
    if (target < 0 || vectors < 0 || target + 1 >= args.length || vectors + 1 >= args.length) {
      System.err.println("usage: Conformance --target HOST:PORT --vectors FILE [--connect-timeout S]");
      System.exit(2);
    }
    Path file = Path.of(args[vectors + 1]);
    JsonArray all =
        JsonParser.parseString(Files.readString(file)).getAsJsonObject().getAsJsonArray("vectors");
    int connect = rest.indexOf("--connect-timeout");
    Duration connectTimeout =
        connect >= 0 && connect + 1 < args.length
            ? Duration.ofMillis((long) (Double.parseDouble(args[connect + 1]) * 1000))
            : Duration.ofSeconds(10);
    try (TmsClient client =
        TmsClient.builder(args[target + 1])
            .timeout(Duration.ofSeconds(30))
            .connectTimeout(connectTimeout)
            .build()) {
      Conformance runner = new Conformance(client, file.toAbsolutePath().getParent());
      for (JsonElement vector : all) {
        JsonObject line = new JsonObject();
        line.addProperty("name", vector.getAsJsonObject().get("name").getAsString());
        line.add("outcome", runner.outcome(vector.getAsJsonObject()));
        System.out.println(GSON.toJson(line));
        System.out.flush();
      }
    }
  }

  /**
   * The outcome of one vector: of its one call, or, made {@code repeat} times, the first that
   * differs from the first call's (else that one).
   */
  private JsonObject outcome(JsonObject vector) throws IOException {
    int repeat = vector.has("repeat") ? vector.get("repeat").getAsInt() : 1;
    JsonObject first = attempt(vector);
    for (int i = 1; i < repeat; i++) {
      JsonObject other = attempt(vector);
      if (!other.equals(first)) {
        return other;
      }
    }
    return first;
  }

  /** The outcome of making the vector's call once: what came back, or the error. */
  private JsonObject attempt(JsonObject vector) throws IOException {
    try {
      return run(vector);
    } catch (TmsException error) {
      JsonObject outcome = new JsonObject();
      outcome.add("error", error(error));
      return outcome;
    }
  }

  /** An error as outcomes show it: its code, reason and the fields at fault. */
  private static JsonObject error(TmsException error) {
    JsonObject failed = new JsonObject();
    failed.addProperty("code", error.code().name());
    failed.addProperty("reason", error.reason());
    JsonArray fields = new JsonArray();
    error.fieldViolations().forEach(violation -> fields.add(violation.field()));
    failed.add("field_violations", fields);
    return failed;
  }

  private JsonObject run(JsonObject vector) throws IOException {
    String call = vector.get("call").getAsString();
    String model = vector.has("model") ? vector.get("model").getAsString() : "";
    String args = vector.has("args") ? GSON.toJson(vector.get("args")) : "";
    JsonObject outcome = new JsonObject();
    switch (call) {
      case "Health" -> outcome.addProperty("health", client.health(model));
      case "ListModels" -> {
        JsonArray names = new JsonArray();
        client.listModels().forEach(info -> names.add(info.getName()));
        outcome.add("models", names);
        JsonObject failed = new JsonObject();
        client.failedModels().forEach(failed::addProperty);
        outcome.add("failed", failed);
      }
      case "GetModelInfo" -> {
        ModelInfo info = client.getModelInfo(model);
        JsonObject described = new JsonObject();
        described.addProperty("name", info.getName());
        described.addProperty("version", info.getVersion());
        described.addProperty("max_batch_size", info.getMaxBatchSize());
        described.add(
            "max_batch_delay",
            info.hasMaxBatchDelay()
                ? new JsonPrimitive(
                    info.getMaxBatchDelay().getSeconds() + info.getMaxBatchDelay().getNanos() / 1e9)
                : JsonNull.INSTANCE);
        described.add("args_schema", parse(info.getArgsSchemaJson()));
        outcome.add("model", described);
      }
      case "RunText" ->
          outcome.add("result", parse(client.runText(model, texts(vector).get(0), args)));
      case "RunTextBatch" ->
          outcome.add("results", parseAll(client.runTextBatch(model, texts(vector), args)));
      case "RunImage" ->
          outcome.add("result", parse(client.runImage(model, images(vector).get(0), args)));
      case "RunImageBatch" ->
          outcome.add("results", parseAll(client.runImageBatch(model, images(vector), args)));
      case "RunImageToImage" -> {
        TmsClient.ImageToImage answer = client.runImageToImage(model, images(vector), args);
        JsonArray described = new JsonArray();
        answer.images().forEach(image -> described.add(describe(image)));
        outcome.add("images", described);
        outcome.add("result", parse(answer.resultJson()));
      }
      case "RunImageStream" -> {
        JsonArray frames = new JsonArray();
        try (FrameStream results =
            client.runImageStream(model, images(vector).iterator(), args)) {
          results.forEachRemaining(
              frame -> {
                JsonObject described = new JsonObject();
                if (frame.error() == null) {
                  described.add("result", parse(frame.resultJson()));
                } else {
                  described.add("error", error(frame.error()));
                }
                frames.add(described);
              });
        }
        outcome.add("frames", frames);
      }
      default -> throw new IllegalArgumentException("unknown call " + call);
    }
    return outcome;
  }

  private static List<String> texts(JsonObject vector) {
    List<String> texts = new ArrayList<>();
    vector.getAsJsonArray("texts").forEach(text -> texts.add(text.getAsString()));
    return texts;
  }

  /** The images a vector names: generated raw pixels, or a file's bytes as they are. */
  private List<Image> images(JsonObject vector) throws IOException {
    List<Image> images = new ArrayList<>();
    for (JsonElement element : vector.getAsJsonArray("images")) {
      JsonObject spec = element.getAsJsonObject();
      if (spec.has("file")) {
        Path file = folder.resolve(spec.get("file").getAsString());
        images.add(Images.encoded(Files.readAllBytes(file)));
        continue;
      }
      JsonObject generate = spec.getAsJsonObject("generate");
      String dtype = generate.get("dtype").getAsString();
      long[] shape = new long[generate.getAsJsonArray("shape").size()];
      for (int i = 0; i < shape.length; i++) {
        shape[i] = generate.getAsJsonArray("shape").get(i).getAsLong();
      }
      ColorOrder order = ColorOrder.valueOf("COLOR_ORDER_" + spec.get("color_order").getAsString());
      images.add(Images.raw(pixels(dtype, shape), dtypeOf(dtype), order, shape));
    }
    return images;
  }

  /** Element i of a generated image, per dtype (README.md, "Pixels"), little-endian. */
  static byte[] pixels(String dtype, long[] shape) {
    long count = 1;
    for (long size : shape) {
      count *= size;
    }
    int width =
        switch (dtype) {
          case "uint8", "int8", "bool" -> 1;
          case "uint16", "int16", "float16" -> 2;
          case "int32", "float32" -> 4;
          case "int64", "float64" -> 8;
          default -> throw new IllegalArgumentException("unknown dtype " + dtype);
        };
    ByteBuffer data =
        ByteBuffer.allocate(Math.toIntExact(count * width)).order(ByteOrder.LITTLE_ENDIAN);
    for (long i = 0; i < count; i++) {
      switch (dtype) {
        case "uint8" -> data.put((byte) (i % 251));
        case "int8" -> data.put((byte) (i % 251 - 125));
        case "uint16" -> data.putShort((short) (i * 257 % 65536));
        case "int16" -> data.putShort((short) (i * 257 % 65536 - 32768));
        case "int32" -> data.putInt(Math.toIntExact(i * 65537 - 1000000));
        case "int64" -> data.putLong(i * 4294967311L - 1099511627776L);
        case "float16" -> data.putShort(float16(i % 64 * 0.25f - 8));
        case "float32" -> data.putFloat(i * 0.25f - 8);
        case "float64" -> data.putDouble(i * 0.125 - 16);
        case "bool" -> data.put((byte) (i % 3 == 0 ? 1 : 0));
        default -> throw new IllegalArgumentException("unknown dtype " + dtype);
      }
    }
    return data.array();
  }

  /**
   * The IEEE binary16 bits of a value that float16 holds exactly as a normal number or zero (as
   * Java 20's Float.floatToFloat16 would give); anything else is refused, not rounded.
   */
  static short float16(float value) {
    int bits = Float.floatToIntBits(value);
    int sign = (bits >>> 16) & 0x8000;
    if (value == 0) {
      return (short) sign;
    }
    int exponent = ((bits >>> 23) & 0xff) - 127 + 15;
    int mantissa = bits & 0x7fffff;
    if (exponent <= 0 || exponent >= 31 || (mantissa & 0x1fff) != 0) {
      throw new IllegalArgumentException(value + " is not exact in float16");
    }
    return (short) (sign | exponent << 10 | mantissa >>> 13);
  }

  private static DType dtypeOf(String name) {
    return DType.valueOf("D_TYPE_" + name.toUpperCase(Locale.ROOT));
  }

  /** An output image: dtype, shape, colour order and the sha256 of its raw data. */
  private static JsonObject describe(Image image) {
    JsonObject described = new JsonObject();
    String dtype = image.getDtype().name().substring("D_TYPE_".length());
    described.addProperty("dtype", dtype.toLowerCase(Locale.ROOT));
    JsonArray shape = new JsonArray();
    image.getShapeList().forEach(shape::add);
    described.add("shape", shape);
    String order = image.getColorOrder().name().substring("COLOR_ORDER_".length());
    described.addProperty("color_order", order);
    try {
      byte[] digest = MessageDigest.getInstance("SHA-256").digest(image.getData().toByteArray());
      described.addProperty("sha256", HexFormat.of().formatHex(digest));
    } catch (NoSuchAlgorithmException missing) {
      throw new IllegalStateException(missing);
    }
    return described;
  }

  /** Parsed JSON text; null (JSON null) for empty text. */
  private static JsonElement parse(String json) {
    return json.isEmpty() ? JsonNull.INSTANCE : JsonParser.parseString(json);
  }

  private static JsonArray parseAll(List<String> texts) {
    JsonArray parsed = new JsonArray();
    texts.forEach(text -> parsed.add(parse(text)));
    return parsed;
  }
}
