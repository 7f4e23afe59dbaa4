/**
 * Images as TMS carries them (tms.v1.Image): raw pixels of any dtype, or a PNG/JPEG file.
 *
 * - `rawImage(pixels, shape)`: a typed array of pixels in C order; its type gives the dtype
 *   (Uint8Array uint8, Int8Array int8, Uint16Array uint16, Int16Array int16, Int32Array int32,
 *   BigInt64Array int64, Float32Array float32, Float64Array float64). bool and float16 have no
 *   typed array of their own: pass the bytes with `{ dtype: DType.D_TYPE_BOOL }` (one byte per
 *   element) or `{ dtype: DType.D_TYPE_FLOAT16 }` (two; `float16(values)` makes them).
 * - `encodedImage(file)`, or a Buffer/Uint8Array that starts with the PNG or JPEG magic passed
 *   to any run method: sent as it is, decoded by the server.
 * - `pixels(image)`: an output image's pixels as the typed array of its dtype.
 */
import { endianness } from "node:os";

import { ColorOrder, DType, Encoding, type Image as ImageMessage } from "./gen/tms/v1/image.js";

/** An image: raw pixels described by dtype, shape and colour order, or a PNG/JPEG file. */
export interface Image {
  /** The pixels (C order, little-endian) or the encoded file. */
  data: Uint8Array;
  /** (height, width) or (height, width, channels) for raw pixels; empty for files. */
  shape: number[];
  dtype: DType;
  /** What the channels mean; the server converts to the model's colour order. */
  colorOrder: ColorOrder;
  encoding: Encoding;
}

/** What every run method accepts as an image: an Image, or the bytes of a PNG/JPEG file. */
export type ImageInput = Image | Uint8Array;

/** The typed arrays rawImage takes. */
export type PixelArray =
  | Uint8Array
  | Uint8ClampedArray
  | Int8Array
  | Uint16Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Float32Array
  | Float64Array;

const ITEM_SIZE: Partial<Record<DType, number>> = {
  [DType.D_TYPE_UINT8]: 1,
  [DType.D_TYPE_INT8]: 1,
  [DType.D_TYPE_UINT16]: 2,
  [DType.D_TYPE_INT16]: 2,
  [DType.D_TYPE_INT32]: 4,
  [DType.D_TYPE_INT64]: 8,
  [DType.D_TYPE_FLOAT16]: 2,
  [DType.D_TYPE_FLOAT32]: 4,
  [DType.D_TYPE_FLOAT64]: 8,
  [DType.D_TYPE_BOOL]: 1,
};

function dtypeOf(pixels: PixelArray): DType {
  if (pixels instanceof Uint8Array || pixels instanceof Uint8ClampedArray) return DType.D_TYPE_UINT8;
  if (pixels instanceof Int8Array) return DType.D_TYPE_INT8;
  if (pixels instanceof Uint16Array) return DType.D_TYPE_UINT16;
  if (pixels instanceof Int16Array) return DType.D_TYPE_INT16;
  if (pixels instanceof Int32Array) return DType.D_TYPE_INT32;
  if (pixels instanceof BigInt64Array) return DType.D_TYPE_INT64;
  if (pixels instanceof Float32Array) return DType.D_TYPE_FLOAT32;
  return DType.D_TYPE_FLOAT64;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** The encoding of a PNG or JPEG file, by its magic bytes; undefined for anything else. */
export function fileEncoding(file: Uint8Array): Encoding | undefined {
  if (file.length >= PNG.length && PNG.every((byte, i) => file[i] === byte)) return Encoding.ENCODING_PNG;
  if (file.length >= 3 && file[0] === 0xff && file[1] === 0xd8 && file[2] === 0xff) return Encoding.ENCODING_JPEG;
  return undefined;
}

/** A PNG or JPEG file, sent as it is; the server decodes it. */
export function encodedImage(file: Uint8Array): Image {
  const encoding = fileEncoding(file);
  if (encoding === undefined) {
    throw new TypeError("bytes are neither a PNG nor a JPEG file; pass raw pixels as rawImage(pixels, shape)");
  }
  const colorOrder = ColorOrder.COLOR_ORDER_UNSPECIFIED; // the file says
  return { data: file, shape: [], dtype: DType.D_TYPE_UNSPECIFIED, colorOrder, encoding };
}

/** Rounds half to even, as IEEE 754 conversions do. */
function roundEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The IEEE 754 half-precision bits of `value`, rounded to nearest even. */
function halfBits(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  if (a < 2 ** -14) return sign | roundEven(a / 2 ** -24); // subnormal, or rounds up to 2^-14
  let exponent = Math.floor(Math.log2(a));
  if (2 ** exponent > a) exponent -= 1; // log2 may be off by one near powers of two
  if (2 ** (exponent + 1) <= a) exponent += 1;
  let mantissa = roundEven((a / 2 ** exponent - 1) * 1024);
  if (mantissa === 1024) [exponent, mantissa] = [exponent + 1, 0];
  if (exponent > 15) return sign | 0x7c00; // too large: infinity
  return sign | ((exponent + 15) << 10) | mantissa;
}

/** Numbers as float16 pixels (their bits, rounded to nearest even), for
 * `rawImage(float16(values), shape, { dtype: DType.D_TYPE_FLOAT16 })`. */
export function float16(values: ArrayLike<number>): Uint16Array {
  return Uint16Array.from(values, halfBits);
}

/** Options of rawImage. */
export interface RawImageOptions {
  /** What the channels mean. Default: GRAY for (h, w) and (h, w, 1), RGB for 3 channels,
   * RGBA for 4, UNSPECIFIED otherwise. */
  color?: ColorOrder;
  /** The element type, when the typed array does not say it: D_TYPE_BOOL or D_TYPE_FLOAT16
   * (or any dtype, given its bytes as a Uint8Array). */
  dtype?: DType;
}

function defaultColor(shape: readonly number[]): ColorOrder {
  const channels = shape.length === 2 ? 1 : shape.length === 3 ? shape[2] : 0;
  return (
    { 1: ColorOrder.COLOR_ORDER_GRAY, 3: ColorOrder.COLOR_ORDER_RGB, 4: ColorOrder.COLOR_ORDER_RGBA }[channels] ??
    ColorOrder.COLOR_ORDER_UNSPECIFIED
  );
}

/** Raw pixels of shape (height, width) or (height, width, channels), in C order. */
export function rawImage(pixels: PixelArray, shape: number[], options: RawImageOptions = {}): Image {
  if (endianness() !== "LE") throw new Error("raw pixels are little-endian; this machine is not");
  const dtype = options.dtype ?? dtypeOf(pixels);
  const size = ITEM_SIZE[dtype];
  if (!size) throw new TypeError(`no raw pixels of dtype ${DType[dtype]}`);
  const count = shape.reduce((a, b) => a * b, 1);
  if (pixels.byteLength !== count * size) {
    throw new RangeError(`${pixels.byteLength} bytes do not fill shape [${shape.join(", ")}] of ${DType[dtype]}`);
  }
  const colorOrder = options.color ?? defaultColor(shape);
  return { data: bytesOf(pixels), shape: [...shape], dtype, colorOrder, encoding: Encoding.ENCODING_RAW };
}

/** The pixels of a raw image as the typed array of its dtype: Uint8Array for uint8 and bool,
 * BigInt64Array for int64, Uint16Array (the bits) for float16... */
export function pixels(image: Image): PixelArray {
  if (image.encoding !== Encoding.ENCODING_RAW && image.encoding !== Encoding.ENCODING_UNSPECIFIED) {
    throw new TypeError("an encoded image has no pixels here; ask for raw output");
  }
  const size = ITEM_SIZE[image.dtype];
  if (!size) throw new TypeError(`no raw pixels of dtype ${DType[image.dtype]}`);
  let data = image.data;
  if (data.byteOffset % size !== 0) data = data.slice(); // typed arrays need aligned offsets
  const n = data.byteLength / size;
  switch (image.dtype) {
    case DType.D_TYPE_INT8:
      return new Int8Array(data.buffer, data.byteOffset, n);
    case DType.D_TYPE_UINT16:
    case DType.D_TYPE_FLOAT16:
      return new Uint16Array(data.buffer, data.byteOffset, n);
    case DType.D_TYPE_INT16:
      return new Int16Array(data.buffer, data.byteOffset, n);
    case DType.D_TYPE_INT32:
      return new Int32Array(data.buffer, data.byteOffset, n);
    case DType.D_TYPE_INT64:
      return new BigInt64Array(data.buffer, data.byteOffset, n);
    case DType.D_TYPE_FLOAT32:
      return new Float32Array(data.buffer, data.byteOffset, n);
    case DType.D_TYPE_FLOAT64:
      return new Float64Array(data.buffer, data.byteOffset, n);
    default:
      return new Uint8Array(data.buffer, data.byteOffset, n);
  }
}

/** An ImageInput as a tms.v1.Image message; a TypeError for what is no image. */
export function toMessage(image: ImageInput): ImageMessage {
  if (!(image instanceof Uint8Array) && !((image as Image | null)?.data instanceof Uint8Array)) {
    const kind = image === null ? "null" : typeof image === "object" ? (image.constructor?.name ?? "Object") : typeof image;
    throw new TypeError(
      `cannot send ${kind} as an image; pass rawImage(pixels, shape), encodedImage(file) or the bytes of a PNG or JPEG file`,
    );
  }
  const value = image instanceof Uint8Array ? encodedImage(image) : image;
  const data = Buffer.from(value.data.buffer, value.data.byteOffset, value.data.byteLength);
  return { ...value, data, sharedMemory: undefined };
}

/** An output message as an Image. */
export function fromMessage(message: ImageMessage): Image {
  const { data, shape, dtype, colorOrder, encoding } = message;
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), shape, dtype, colorOrder, encoding };
}
