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
import java.util.function.Consumer;

/**
 * One {@link TmsClient#runImageStream} call: an iterator of the frames' results, in order, as they
 * come. Close it (try-with-resources) to end the stream early; it ends by itself once every frame
 * is answered or the stream fails. Use it from one thread.
 *
 * <p>The caller's iterator is read on a thread of the stream's own, so each answer is there as
 * soon as it comes, whatever the iterator is doing: at most {@code window} frames are sent and
 * not yet answered, and the next frame is taken from the iterator only when there is room. A
 * frame that fails alone comes back as a {@link FrameResult} with its error, and the stream goes
 * on; a failure of the stream as a whole (no such model, the deadline passed, its worker went
 * away) is thrown as {@link TmsException} from {@link #hasNext()} and {@link #next()}; closing
 * the client ends the stream at once, FAILED_PRECONDITION, even while the iterator is between
 * frames. When the iterator throws (or yields null: IllegalArgumentException), the frames already
 * sent are answered, then {@link #hasNext()} throws that exception. A frame the iterator is still
 * reading when the stream ends is not sent; its thread ends once the iterator returns it.
 */
public final class FrameStream implements Iterator<FrameResult>, AutoCloseable {
  private static final Object COMPLETED = new Object();

  private final WorkerPool pool;
  private final WorkerPool.Member member;
  private final Iterator<Image> frames;
  private final String model;
  private final String argsJson;
  // the server's answers, then COMPLETED or its error (and one a send failed with): at most
  // window + 2 items
  private final BlockingQueue<Object> answers = new LinkedBlockingQueue<>();
  private final StreamObserver<RunImageStreamRequest> requests; // used holding lock only
  private final Object lock = new Object();
  private int room; // guarded by lock: frames that may be sent before an answer comes
  private boolean over; // guarded by lock: the call ended or was cancelled; nothing more is sent
  private volatile long sent; // written by the reading thread, holding lock
  private volatile Throwable sourceFailure; // what the caller's iterator threw
  private long answered;
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
    this.room = window;
    this.member = pool.pick(deadline == null ? found : found.minimum(deadline), model);
    member.begin();
    try {
      this.requests = open(deadline);
    } catch (RuntimeException error) {
      member.end();
      throw error;
    }
    Thread reader = new Thread(this::sendFrames, "tms-stream-frames");
    reader.setDaemon(true);
    reader.start();
  }

  /** Start the call; its answers, then its end, go to {@link #answers}. */
  private StreamObserver<RunImageStreamRequest> open(Deadline deadline) {
    StreamObserver<RunImageStreamResponse> observer =
        new StreamObserver<>() {
          @Override
          public void onNext(RunImageStreamResponse response) {
            synchronized (lock) {
              room++;
              lock.notifyAll();
            }
            answers.add(response);
          }

          @Override
          public void onError(Throwable error) {
            stop();
            answers.add(error);
          }

          @Override
          public void onCompleted() {
            stop();
            answers.add(COMPLETED);
          }
        };
    ModelServiceStub stub = member.asyncStub();
    return (deadline == null ? stub : stub.withDeadline(deadline)).runImageStream(observer);
  }

  /** Whether another result comes; waits for it. */
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
        if (sourceFailure != null) { // every frame sent is answered: now the iterator's error
          throw failure = unchecked(sourceFailure);
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
    } catch (RuntimeException error) { // an answer out of order, or an interrupt
      if (!ended) {
        cancel("the stream failed");
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

  /**
   * Read the caller's frames and send each once there is room, then half-close; on a thread of its
   * own, until the call is over. When the iterator throws, or yields null, half-close all the same:
   * {@link #hasNext()} throws that once the frames sent are answered.
   */
  private void sendFrames() {
    try {
      while (takeRoom()) {
        if (!frames.hasNext()) {
          break;
        }
        Image frame = frames.next();
        if (frame == null) {
          throw new IllegalArgumentException("frame " + sent + " of the stream is null");
        }
        RunImageStreamRequest.Builder request =
            RunImageStreamRequest.newBuilder().setImage(frame).setFrameId(sent);
        if (sent == 0) {
          request.setModel(model).setArgsJson(argsJson);
        }
        RunImageStreamRequest built = request.build();
        if (!send(requests -> {
              sent++; // before the answer to it can come
              requests.onNext(built);
            })) {
          return;
        }
      }
    } catch (RuntimeException | Error thrown) { // the caller's iterator failed
      sourceFailure = thrown;
    }
    send(StreamObserver::onCompleted);
  }

  /** Wait until a frame may be sent; false once the call is over. */
  private boolean takeRoom() {
    synchronized (lock) {
      while (room == 0 && !over) {
        try {
          lock.wait();
        } catch (InterruptedException interrupted) { // by the caller's iterator, on this thread
          throw new IllegalStateException("interrupted while reading frames", interrupted);
        }
      }
      room--;
      return !over;
    }
  }

  /**
   * Do {@code action} on the call unless it is over; false if it is, or if the action failed (a
   * connection the client's close() shut under it: the stream then fails with its error).
   */
  private boolean send(Consumer<StreamObserver<RunImageStreamRequest>> action) {
    synchronized (lock) {
      if (over) {
        return false;
      }
      try {
        action.accept(requests);
        return true;
      } catch (RuntimeException error) {
        over = true;
        answers.add(error);
        return false;
      }
    }
  }

  /** Send nothing more: the call is over. */
  private void stop() {
    synchronized (lock) {
      over = true;
      lock.notifyAll();
    }
  }

  /** Cancel the call, unless it is over already. */
  private void cancel(String why) {
    send(requests -> requests.onError(Status.CANCELLED.withDescription(why).asException()));
    stop();
  }

  private static RuntimeException unchecked(Throwable thrown) {
    if (thrown instanceof Error error) {
      throw error;
    }
    return (RuntimeException) thrown;
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
      cancel("the stream was closed");
      end();
    }
  }

  @Override
  public String toString() {
    return "FrameStream(" + model + " on " + member.worker().key() + ", sent " + sent
        + ", answered " + answered + (ended ? ", ended" : "") + ")";
  }
}
