package io.tinymodelserver.tms.client;

import io.grpc.Deadline;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import io.tinymodelserver.tms.client.TmsClient.FrameResult;
import io.tinymodelserver.tms.v1.Image;
import io.tinymodelserver.tms.v1.ModelServiceGrpc.ModelServiceStub;
import io.tinymodelserver.tms.v1.RunImageStreamRequest;
import io.tinymodelserver.tms.v1.RunImageStreamResponse;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;

/**
 * One {@link TmsClient#runImageStream} call: an iterator of the frames' results, in order, as they
 * come. Close it (try-with-resources) to end the stream early; it ends by itself once every frame
 * is answered or the stream fails. Use it from one thread.
 *
 * <p>At most {@code window} frames are sent and not yet answered: the next frame is taken from the
 * caller's iterator, on the thread that calls {@link #hasNext()}, only when there is room. A frame
 * that fails alone comes back as a {@link FrameResult} with its error, and the stream goes on; a
 * failure of the stream as a whole (no such model, the deadline passed, its worker went away) is
 * thrown as {@link TmsException} from {@link #hasNext()} and {@link #next()}; closing the client
 * ends the stream at once, FAILED_PRECONDITION.
 */
public final class FrameStream implements Iterator<FrameResult>, AutoCloseable {
  private static final Object COMPLETED = new Object();

  private final WorkerPool pool;
  private final WorkerPool.Member member;
  private final Iterator<Image> frames;
  private final String model;
  private final String argsJson;
  private final int window;
  // the server's answers, then COMPLETED or its error: at most window + 1 items
  private final BlockingQueue<Object> answers = new LinkedBlockingQueue<>();
  private final StreamObserver<RunImageStreamRequest> requests;
  private long sent;
  private long answered;
  private boolean halfClosed;
  private boolean ended; // the call is over (answered, failed or cancelled) and member.end() done
  private RuntimeException failure; // why it ended, when it failed
  private FrameResult next;

  /**
   * Place the stream on a worker (looking for one until {@code found}) and open it; {@code
   * deadline} bounds the whole stream (null: no bound).
   */
  FrameStream(
      WorkerPool pool,
      Deadline found,
      Deadline deadline,
      String model,
      Iterator<Image> frames,
      String argsJson,
      int window) {
    this.pool = pool;
    this.frames = frames;
    this.model = model;
    this.argsJson = argsJson;
    this.window = window;
    this.member = pool.pick(deadline == null ? found : found.minimum(deadline), model);
    member.begin();
    try {
      this.requests = open(deadline);
    } catch (RuntimeException error) {
      member.end();
      throw error;
    }
  }

  /** Start the call; its answers, then its end, go to {@link #answers}. */
  private StreamObserver<RunImageStreamRequest> open(Deadline deadline) {
    StreamObserver<RunImageStreamResponse> observer =
        new StreamObserver<>() {
          @Override
          public void onNext(RunImageStreamResponse response) {
            answers.add(response);
          }

          @Override
          public void onError(Throwable error) {
            answers.add(error);
          }

          @Override
          public void onCompleted() {
            answers.add(COMPLETED);
          }
        };
    ModelServiceStub stub = member.asyncStub();
    return (deadline == null ? stub : stub.withDeadline(deadline)).runImageStream(observer);
  }

  /** Whether another result comes; waits for it, sending frames as there is room. */
  @Override
  public boolean hasNext() {
    if (next != null) {
      return true;
    }
    if (ended) {
      if (failure != null) {
        throw failure;
      }
      return false;
    }
    try {
      send();
      Object answer;
      try {
        answer = answers.take();
      } catch (InterruptedException interrupted) {
        Thread.currentThread().interrupt();
        throw new TmsException(Status.Code.CANCELLED, "interrupted", interrupted);
      }
      if (answer == COMPLETED) {
        end();
        if (answered < sent) { // none of TMS's servers ends so: a frame would be lost
          throw failure =
              new TmsException(
                  Status.Code.INTERNAL,
                  "the stream ended before frame " + answered + " was answered",
                  null);
        }
        return false;
      }
      if (answer instanceof Throwable thrown) {
        StatusRuntimeException status =
            thrown instanceof StatusRuntimeException known
                ? known
                : Status.fromThrowable(thrown).asRuntimeException();
        end();
        pool.checkOpen(); // close() ended it
        if (status.getStatus().getCode() == Status.Code.UNAVAILABLE
            || TmsClient.connectionLost(status)) {
          pool.drop(member);
        }
        throw failure = TmsException.from(status);
      }
      next = result((RunImageStreamResponse) answer);
      return true;
    } catch (RuntimeException error) { // the frames' iterator may throw too
      if (!ended) {
        requests.onError(Status.CANCELLED.withDescription("the stream failed").asException());
        end();
      }
      throw failure = error;
    }
  }

  /** The next frame's result; waits for it. */
  @Override
  public FrameResult next() {
    if (!hasNext()) {
      throw new NoSuchElementException();
    }
    FrameResult result = next;
    next = null;
    return result;
  }

  /** Send frames while there is room; once the caller's iterator has no more, half-close. */
  private void send() {
    while (!halfClosed && sent - answered < window) {
      if (!frames.hasNext()) {
        requests.onCompleted();
        halfClosed = true;
        return;
      }
      RunImageStreamRequest.Builder request =
          RunImageStreamRequest.newBuilder().setImage(frames.next()).setFrameId(sent);
      if (sent == 0) {
        request.setModel(model).setArgsJson(argsJson);
      }
      requests.onNext(request.build());
      sent++;
    }
  }

  private FrameResult result(RunImageStreamResponse response) {
    long expected = answered++;
    if (response.getFrameId() != expected) {
      throw new TmsException(
          Status.Code.INTERNAL,
          "the server answered frame " + response.getFrameId() + " where frame " + expected
              + " was due",
          null);
    }
    if (response.getErrorStatus().isEmpty()) {
      return new FrameResult(expected, response.getResultJson(), null);
    }
    return new FrameResult(expected, null, TmsException.fromStatus(response.getErrorStatus()));
  }

  private void end() {
    ended = true;
    member.end();
  }

  /** End the stream: cancel the call if it still runs. */
  @Override
  public void close() {
    next = null;
    if (!ended) {
      requests.onError(Status.CANCELLED.withDescription("the stream was closed").asException());
      end();
    }
  }

  @Override
  public String toString() {
    return "FrameStream(" + model + " on " + member.worker().key() + ", sent " + sent
        + ", answered " + answered + (ended ? ", ended" : "") + ")";
  }
}
