"""Image-carrying messages on the protobuf wire, without copying the pixels.

Building a message with protobuf copies the pixels several times (into the ``Image``, into the
request, then out as bytes), and parsing one copies them again; for a 1080p frame each copy of
fresh memory costs milliseconds. So the messages that carry images are written and read here
around the pixel bytes: everything else (model name, args, image metadata) still goes through
the generated classes, while the pixels are joined in once on the way out and viewed in place
on the way in. The bytes are ordinary ``tms.v1`` messages; any protobuf library reads and
writes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from google.protobuf.message import Message

from tms.v1 import image_pb2

__all__ = [
    "LENGTH_DELIMITED",
    "Buffer",
    "ImageMessage",
    "ImageParts",
    "TooManyImagesError",
    "WireError",
    "fields",
    "join_images",
    "merge_singular",
    "read_varint",
    "split_images",
    "varint",
]

M = TypeVar("M", bound=Message)
#: Bytes-like objects whose bytes are sent as they are.
Buffer: TypeAlias = bytes | bytearray | memoryview

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: The wire type of a length-delimited field (bytes, strings, messages, packed numbers).
LENGTH_DELIMITED = _LEN
_DATA_KEY = (3 << 3) | _LEN  # Image.data is field 3
_DATA_KEY_BYTES = bytes([_DATA_KEY])
_DATA_FIELD = image_pb2.Image.DESCRIPTOR.fields_by_name["data"].number
assert _DATA_FIELD == 3
#: Image fields of at most this many bytes are first parsed whole (see _split_image).
_SMALL_IMAGE = 4096


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


class TooManyImagesError(ValueError):
    """A message carrying more images than the reader allows."""


@dataclass(frozen=True)
class ImageParts:
    """An image as its metadata (an ``Image`` without ``data``) and its data bytes."""

    meta: image_pb2.Image
    data: Buffer

    def to_message(self) -> image_pb2.Image:
        """One ``Image`` message holding both (copies the data)."""
        message = image_pb2.Image()
        message.CopyFrom(self.meta)
        message.data = bytes(self.data)
        return message


@dataclass(frozen=True)
class ImageMessage:
    """A message that carries images, not written yet: ``head`` with ``images`` as the
    occurrences of its message field ``field``.

    Written as late as possible, by whoever sends it: ``join`` writes the bytes (see
    ``join_images``); a channel to a worker on the same host writes the pixels into shared
    memory instead and sends references (tms_client.shm).
    """

    head: Message
    field: int
    images: Sequence[ImageParts]

    def join(self) -> bytes:
        return join_images(self.head, self.field, self.images)


def varint(value: int) -> bytes:
    """A protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(buffer: memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    end = len(buffer)
    if pos < end and buffer[pos] < 0x80:  # one byte: keys, and most lengths in a message
        return buffer[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _skip(buffer: memoryview, pos: int, wire_type: int) -> tuple[int, int]:
    """The start and end of the payload of a field whose key ended at ``pos``."""
    if wire_type == _VARINT:
        _, end = read_varint(buffer, pos)
        return pos, end
    if wire_type == _LEN:
        length, start = read_varint(buffer, pos)
        end = start + length
    elif wire_type == _I64:
        start, end = pos, pos + 8
    elif wire_type == _I32:
        start, end = pos, pos + 4
    else:
        raise WireError(f"unsupported wire type {wire_type}")
    if end > len(buffer):
        raise WireError("field runs past the end of the message")
    return start, end


def fields(buffer: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, key, start, end) of each field of the message in ``buffer``, in
    order: where the field begins (its key), and where its payload starts and ends (a
    varint's own bytes; a length-delimited field's bytes after its length). Nothing is
    parsed or copied; WireError if it is malformed."""
    pos, end = 0, len(buffer)
    while pos < end:
        key_start = pos
        key, pos = read_varint(buffer, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        start, pos = _skip(buffer, pos, wire_type)
        yield number, wire_type, key_start, start, pos


def join_images(head: Message, field: int, images: Sequence[ImageParts]) -> bytes:
    """``head`` serialized, with ``images`` as occurrences of its message field ``field``.

    The pixels are copied once, into the returned bytes.
    """
    parts: list[Buffer] = [head.SerializeToString()]
    key = varint((field << 3) | _LEN)
    for image in images:
        meta = image.meta.SerializeToString()
        size = memoryview(image.data).nbytes
        data_header = _DATA_KEY_BYTES + varint(size)
        parts += [key, varint(len(meta) + len(data_header) + size), meta, data_header, image.data]
    return b"".join(parts)


def split_images(
    cls: type[M], buffer: bytes, field: int, *, max_images: int | None = None
) -> tuple[M, list[ImageParts]]:
    """Parse ``buffer`` as ``cls``, taking the occurrences of message field ``field`` out as
    ImageParts whose data is a read-only view of ``buffer``.

    Occurrences are returned in order; for a singular field the caller merges them as
    protobuf would (see ``merge_singular``). More than ``max_images`` occurrences raise
    TooManyImagesError as soon as the one too many is seen.
    """
    view = memoryview(buffer).toreadonly()
    rest: list[memoryview] = []
    images: list[ImageParts] = []
    try:
        for number, wire_type, key_start, start, end in fields(view):
            if number == field and wire_type == LENGTH_DELIMITED:
                if max_images is not None and len(images) == max_images:
                    raise TooManyImagesError(f"more than {max_images} images")
                images.append(_split_image(view, start, end))
            else:
                rest.append(view[key_start:end])
        message = cls.FromString(b"".join(rest))
    except (WireError, TooManyImagesError):
        raise
    except Exception as exc:  # protobuf's DecodeError and friends
        raise WireError(f"cannot parse {cls.DESCRIPTOR.name}: {exc}") from None
    return message, images


def _split_image(view: memoryview, start: int, end: int) -> ImageParts:
    if end - start <= _SMALL_IMAGE:
        # Few bytes, likely no data (an image in shared memory): protobuf parses them faster
        # than the loop below. An image with data is read below, so its data stays a view.
        image = image_pb2.Image.FromString(bytes(view[start:end]))
        if not image.data:
            return ImageParts(image, view[start:start])
    meta: list[memoryview] = []
    data: memoryview = view[start:start]
    pos = start
    while pos < end:
        key_start = pos
        key, pos = read_varint(view, pos)
        wire_type = key & 7
        payload_start, pos = _skip(view, pos, wire_type)
        if pos > end:
            raise WireError("image field runs past the end of its message")
        if key == _DATA_KEY:
            data = view[payload_start:pos]  # the last occurrence wins, as in protobuf
        else:
            meta.append(view[key_start:pos])
    return ImageParts(image_pb2.Image.FromString(b"".join(meta)), data)


def merge_singular(images: Sequence[ImageParts]) -> ImageParts | None:
    """The one image of a singular field that occurred ``len(images)`` times, merged as
    protobuf merges repeated occurrences of a message field; None when it is absent."""
    if not images:
        return None
    if len(images) == 1:
        return images[0]
    meta = image_pb2.Image()
    data: Buffer = b""
    for image in images:
        meta.MergeFrom(image.meta)
        if memoryview(image.data).nbytes:
            data = image.data
    return ImageParts(meta, data)
