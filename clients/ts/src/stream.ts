/**
 * Streams of frames (RunImageStream): one bidirectional call that runs a model on a sequence of
 * frames (a video) and answers each frame, in order.
 *
 * At most `window` frames are sent and not yet answered. The server reads a frame only once it
 * has answered the one before, so the window bounds the frames in flight, and a producer faster
 * than the model (a video file) waits for room instead of piling frames up. The frames are read
 * while the answers are awaited, so a live source's answers are not held back by its next frame.
 */
import { status } from "@grpc/grpc-js";

import { TmsError } from "./errors.js";
import { RunImageStreamRequest, RunImageStreamResponse } from "./gen/tms/v1/model_service.js";
import { type ImageInput, toMessage } from "./images.js";
import type { Stream } from "./transport.js";

/** The answer to one frame of runImageStream. */
export interface FrameResult {
  /** The frame's index among the frames given: 0, 1, 2... */
  frameId: number;
  /** The model's result for the frame, parsed from JSON; undefined when the frame failed. */
  result: unknown;
  /** Why the frame failed alone (the TmsError a runImage of it would reject with); only with
   * `errors: "yield"` (by default a failed frame throws it). */
  error?: TmsError;
}

/** What to do with a frame that fails: throw its error and end the stream, or yield it. */
export type FrameErrors = "raise" | "yield";

/** One stream's frames and answers apart from its I/O: the requests built, the answers parsed
 * and checked, and the window. */
export class FrameStream {
  /** Frames sent so far. */
  sent = 0;
  /** Frames answered so far. */
  answered = 0;

  constructor(
    readonly model: string,
    /** The stream's args as JSON ("" for none). */
    readonly argsJson: string,
    readonly window: number,
    readonly errors: FrameErrors,
  ) {
    if (!Number.isInteger(window) || window < 1) throw new RangeError(`window must be an integer >= 1, not ${window}`);
    if (errors !== "raise" && errors !== "yield") throw new TypeError(`errors must be "raise" or "yield", not ${errors}`);
  }

  /** Whether another frame may be sent now. */
  hasRoom(): boolean {
    return this.sent - this.answered < this.window;
  }

  /** The next frame's request, its id the frame's index; the first also names the model and
   * carries the stream's args. */
  request(image: ImageInput): Buffer {
    const first = this.sent === 0;
    const request = RunImageStreamRequest.fromPartial({
      model: first ? this.model : "",
      image: toMessage(image),
      argsJson: first ? this.argsJson : "",
      frameId: this.sent,
    });
    this.sent += 1;
    return Buffer.from(RunImageStreamRequest.encode(request).finish());
  }

  /** The next frame's answer; throws its error unless errors is "yield", and INTERNAL for an
   * answer to another frame. */
  answer(reply: Buffer): FrameResult {
    const response = RunImageStreamResponse.decode(reply);
    const expected = this.answered++;
    if (response.frameId !== expected) {
      throw new TmsError(status.INTERNAL, `the server answered frame ${response.frameId} where frame ${expected} was due`);
    }
    if (response.errorStatus.length === 0) {
      return { frameId: expected, result: response.resultJson === "" ? null : JSON.parse(response.resultJson) };
    }
    const error = TmsError.fromStatus(response.errorStatus);
    if (this.errors === "raise") throw error;
    return { frameId: expected, result: undefined, error };
  }
}

/**
 * The answers of `stream`, a RunImageStream call just opened, for `first` and the rest of
 * `frames`: the frames are sent while the window has room, and the answers yielded as they come.
 * Stopping early (or an error, or `signal`) cancels the call. An error reading or encoding a
 * frame ends the sending: the frames sent are answered (and yielded), then it is thrown; an
 * abort throws the signal's reason.
 */
export async function* exchange(
  stream: Stream,
  state: FrameStream,
  first: ImageInput,
  frames: AsyncIterator<ImageInput>,
  signal?: AbortSignal,
): AsyncGenerator<FrameResult, void, undefined> {
  let over = false;
  let room = (): void => undefined;
  let failure: { error: unknown } | undefined; // what reading or encoding a frame threw
  const send = async (): Promise<void> => {
    for (let next: IteratorResult<ImageInput> = { value: first }; !next.done; next = await frames.next()) {
      if (over) return;
      stream.write(state.request(next.value));
      while (!state.hasRoom() && !over) await new Promise<void>((resolve) => (room = resolve));
      if (over) return;
    }
    if (!over) stream.end();
  };
  const cancel = (): void => stream.cancel();
  signal?.addEventListener("abort", cancel, { once: true });
  void send().catch((error: unknown) => {
    failure = { error };
    if (state.sent === 0) stream.cancel();
    else if (!over) stream.end(); // the frames sent are answered first
  });
  try {
    signal?.throwIfAborted();
    for (let next = await stream.replies.next(); !next.done; next = await stream.replies.next()) {
      const answer = state.answer(next.value);
      room();
      yield answer;
    }
    if (failure !== undefined) throw failure.error;
    if (state.answered < state.sent) {
      throw new TmsError(status.INTERNAL, `the stream ended before frame ${state.answered} was answered`);
    }
  } catch (error) {
    if (failure !== undefined) throw failure.error;
    signal?.throwIfAborted();
    throw error;
  } finally {
    over = true;
    room();
    signal?.removeEventListener("abort", cancel);
    stream.cancel();
  }
}
