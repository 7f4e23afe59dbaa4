package tmsclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"sync/atomic"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

const streamMethod = "RunImageStream"

// FrameResult is the answer to one frame of a RunImageStream.
type FrameResult struct {
	// FrameID is the frame's index among the frames given: 0, 1, 2...
	FrameID int
	// Result is the model's result for the frame as JSON; nil when the frame failed.
	Result json.RawMessage
	// Err is why the frame failed alone (an *Error, as a RunImage of it would return); the
	// stream went on. nil when the frame succeeded.
	Err error
}

// StreamOption configures one RunImageStream.
type StreamOption func(*streamOptions)

type streamOptions struct{ window int }

// WithWindow is how many frames may be sent and not yet answered (4 by default; at least 1).
// The next frame is taken from the sequence only when there is room.
func WithWindow(frames int) StreamOption { return func(o *streamOptions) { o.window = frames } }

// RunImageStream runs model on a sequence of frames (a video) over one stream and yields a
// FrameResult for each, in order, as they come. args, when not nil, are the stream's (the
// model's stream hook receives them).
//
// The whole stream goes to one worker, picked as a call's, whose model may keep state across
// its frames (a tracker); it counts as one call in flight there and is not retried. A frame
// that fails alone is yielded with its Err set and the stream goes on; an error of the stream
// as a whole (an unknown model, a lost worker, ctx done) is the yielded error, and ends it.
// ctx alone bounds the whole stream (WithTimeout does not apply: a video may run for hours;
// finding a worker takes at most the connect timeout). Frames are read on another goroutine.
// The stream's error (ctx done, Close, the server's) is yielded at once, even while frames is
// blocked (a camera between frames); frames then stops at its next yield, and nothing more is
// sent. Stopping the loop early cancels the stream, then waits for frames to yield again or
// return, so a sequence that may block should also watch ctx. A panic in frames is recovered
// there: the frames sent are answered and yielded, then the panic goes on, with its value, in
// the loop's goroutine, as it would from a sequence ranged over directly (a stream that fails
// first yields its error instead).
//
//	for r, err := range c.RunImageStream(ctx, "tracker", slices.Values(frames), nil) {
//		if err != nil { return err } // the stream failed
//		if r.Err != nil { continue } // frame r.FrameID failed alone
//		use(r.Result)
//	}
func (c *Client) RunImageStream(ctx context.Context, model string, frames iter.Seq[Image], args any,
	opts ...StreamOption) iter.Seq2[FrameResult, error] {
	o := streamOptions{window: 4}
	for _, opt := range opts {
		opt(&o)
	}
	return func(yield func(FrameResult, error) bool) {
		argsJSON, err := marshalArgs(args)
		if err == nil && o.window < 1 {
			err = fmt.Errorf("tms: %s: window must be at least 1, not %d", streamMethod, o.window)
		}
		if err != nil {
			yield(FrameResult{}, err)
			return
		}
		if err := c.stream(ctx, model, argsJSON, frames, o.window, yield); err != nil {
			yield(FrameResult{}, err)
		}
	}
}

// stream runs one RunImageStream on the worker the balancer picks, a call in flight there
// until it ends, and returns the stream's error (nil when it ended well or yield stopped it).
// Close ends it at once.
func (c *Client) stream(ctx context.Context, model, argsJSON string, frames iter.Seq[Image],
	window int, yield func(FrameResult, error) bool) (err error) {
	if c.pool.isClosed() {
		return errorOf(streamMethod, errClosed, 0)
	}
	ctx, unbind := c.pool.bind(ctx)
	defer unbind()
	defer func() { err = c.closedIf(streamMethod, err) }()
	// No per-call timeout (a video may run for hours): ctx alone bounds the stream; finding
	// a worker for it takes at most the connect timeout.
	found, cancel := context.WithTimeout(ctx, c.opts.connectTimeout)
	w, err := c.pick(found, model, nil)
	cancel()
	if err != nil {
		return errorOf(streamMethod, err, 0)
	}
	w.inFlight.Add(1)
	defer w.inFlight.Add(-1)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	call, err := w.stub.RunImageStream(ctx)
	if err != nil {
		return c.streamFailed(w, nil, err)
	}
	room := make(chan struct{}, window) // a token per frame sent and not yet answered
	var sent atomic.Int64               // frames sent
	done := make(chan struct{})
	var panicked any // what the frames panicked with; read once done is closed
	go func() {
		defer close(done)
		defer func() {
			if panicked = recover(); panicked != nil {
				_ = call.CloseSend() // the frames sent are answered, then the stream ends
			}
		}()
		sendFrames(ctx, call, model, argsJSON, frames, room, &sent)
	}()
	// ended stops the frames, waits for them to end and re-panics with their panic, as a loop
	// over them would. Only a stream that ends well or a loop stopped early waits: an error is
	// the caller's at once, the frames stopping at their next yield.
	ended := func() {
		stop()
		<-done
		if panicked != nil {
			panic(panicked)
		}
	}
	for next := 0; ; next++ {
		resp, err := call.Recv()
		if err == io.EOF {
			c.observe(w, call.Trailer())
			if int64(next) < sent.Load() { // none of TMS's servers ends so; a frame would be lost
				return errorOf(streamMethod, status.Errorf(codes.Internal,
					"the stream ended before frame %d was answered", next), 1)
			}
			ended() // at once: a server ends the stream once the frames are done
			return nil
		}
		if err != nil {
			return c.streamFailed(w, call, err)
		}
		if id := resp.GetFrameId(); id != uint64(next) {
			return errorOf(streamMethod, status.Errorf(codes.Internal,
				"the server answered frame %d where frame %d was due", id, next), 1)
		}
		select {
		case <-room:
		default:
		}
		if !yield(frameResult(next, resp), nil) {
			ended()
			return nil
		}
	}
}

// streamFailed is the *Error of a stream the server (or the connection) ended with err,
// after reading its trailers; UNAVAILABLE drops the worker, as after any call.
func (c *Client) streamFailed(w *Worker, call tmsv1.ModelService_RunImageStreamClient, err error) *Error {
	if call != nil {
		c.observe(w, call.Trailer())
	}
	if status.Code(err) == codes.Unavailable {
		c.pool.drop(w)
	}
	return errorOf(streamMethod, err, 1)
}

// sendFrames sends each frame once there is room in the window, the first naming the model
// and carrying the stream's args, then closes the sending side. It stops when ctx is done or
// a send fails (Recv then returns why), sending nothing more: a frame yielded after ctx is done
// is dropped.
func sendFrames(ctx context.Context, call tmsv1.ModelService_RunImageStreamClient, model, argsJSON string,
	frames iter.Seq[Image], room chan<- struct{}, sent *atomic.Int64) {
	id := uint64(0)
	for img := range frames {
		if ctx.Err() != nil {
			return
		}
		select {
		case room <- struct{}{}:
		case <-ctx.Done():
			return
		}
		req := &tmsv1.RunImageStreamRequest{Image: img.message(), FrameId: id}
		if id == 0 {
			req.Model, req.ArgsJson = model, argsJSON
		}
		if call.Send(req) != nil {
			return
		}
		sent.Add(1)
		id++
	}
	_ = call.CloseSend()
}

// frameResult is the FrameResult of an answer: its result, or its google.rpc.Status as an *Error.
func frameResult(id int, resp *tmsv1.RunImageStreamResponse) FrameResult {
	if len(resp.GetErrorStatus()) == 0 {
		return FrameResult{FrameID: id, Result: json.RawMessage(resp.GetResultJson())}
	}
	st := &spb.Status{}
	if err := proto.Unmarshal(resp.GetErrorStatus(), st); err != nil {
		return FrameResult{FrameID: id, Err: errorOf(streamMethod,
			status.Errorf(codes.Internal, "frame %d: undecodable error_status: %v", id, err), 1)}
	}
	return FrameResult{FrameID: id, Err: statusError(streamMethod, status.FromProto(st), 1)}
}
