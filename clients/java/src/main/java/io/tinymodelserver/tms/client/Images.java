package io.tinymodelserver.tms.client;

import com.google.protobuf.ByteString;
import io.tinymodelserver.tms.v1.ColorOrder;
import io.tinymodelserver.tms.v1.DType;
import io.tinymodelserver.tms.v1.Encoding;
import io.tinymodelserver.tms.v1.Image;
import java.util.Arrays;
import java.util.Objects;

/**
 * Makes the {@link Image} messages the run calls take:
 *
 * <pre>{@code
 * Image photo = Images.encoded(Files.readAllBytes(Path.of("photo.jpg"))); // sent as it is
 * Image gray = Images.raw(pixels, DType.D_TYPE_UINT8, ColorOrder.COLOR_ORDER_GRAY, 480, 640);
 * }</pre>
 */
public final class Images {
  private Images() {}

  /**
   * Raw pixels: {@code data} holds the elements of {@code dtype} in C order, little-endian, for
   * {@code shape} ((H, W) or (H, W, C)); the server checks that they agree.
   */
  public static Image raw(byte[] data, DType dtype, ColorOrder colorOrder, long... shape) {
    Objects.requireNonNull(data, "data");
    Image.Builder image =
        Image.newBuilder()
            .setEncoding(Encoding.ENCODING_RAW)
            .setDtype(Objects.requireNonNull(dtype, "dtype"))
            .setColorOrder(Objects.requireNonNull(colorOrder, "colorOrder"))
            .setData(ByteString.copyFrom(data));
    Arrays.stream(shape).forEach(image::addShape);
    return image.build();
  }

  /**
   * The bytes of a PNG or JPEG file, sent as they are (the server decodes them); the encoding is
   * read from the first bytes. {@link IllegalArgumentException} for anything else.
   */
  public static Image encoded(byte[] file) {
    return Image.newBuilder()
        .setEncoding(encodingOf(file))
        .setData(ByteString.copyFrom(file))
        .build();
  }

  /** {@code ENCODING_PNG} or {@code ENCODING_JPEG}, from a file's signature. */
  static Encoding encodingOf(byte[] file) {
    byte[] png = {(byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (file.length >= png.length && Arrays.equals(file, 0, png.length, png, 0, png.length)) {
      return Encoding.ENCODING_PNG;
    }
    if (file.length >= 3
        && file[0] == (byte) 0xff
        && file[1] == (byte) 0xd8
        && file[2] == (byte) 0xff) {
      return Encoding.ENCODING_JPEG;
    }
    throw new IllegalArgumentException("not a PNG or JPEG file");
  }
}
