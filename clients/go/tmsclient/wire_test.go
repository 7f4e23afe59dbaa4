package tmsclient

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

// fakeWorker is a one-worker ModelService on loopback whose RunText fails with the statuses
// of fail, one per call, then answers.
type fakeWorker struct {
	tmsv1.UnimplementedModelServiceServer
	fail  []error
	calls atomic.Int32
}

func (f *fakeWorker) GetWorkerInfo(context.Context, *tmsv1.GetWorkerInfoRequest) (*tmsv1.GetWorkerInfoResponse, error) {
	return &tmsv1.GetWorkerInfoResponse{InstanceId: "fake", Pid: 1, WorkerCount: 1}, nil
}

func (f *fakeWorker) RunText(_ context.Context, req *tmsv1.RunTextRequest) (*tmsv1.RunTextResponse, error) {
	if n := int(f.calls.Add(1)); n <= len(f.fail) {
		return nil, f.fail[n-1]
	}
	return &tmsv1.RunTextResponse{ResultJson: `{"ok": true}`}, nil
}

// serveFake serves f on loopback and dials it with opts (a 5 s call timeout first).
func serveFake(t *testing.T, f tmsv1.ModelServiceServer, opts ...Option) *Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	tmsv1.RegisterModelServiceServer(s, f)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	c, err := Dial(context.Background(), lis.Addr().String(), append([]Option{WithTimeout(5 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestDetailsCrossTheWireAndQueueFullIsRetried(t *testing.T) {
	f := &fakeWorker{fail: []error{
		detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(50*time.Millisecond)),
		detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(50*time.Millisecond)),
	}}
	c := serveFake(t, f)
	start := time.Now()
	result, err := c.RunText(context.Background(), "m", "x", nil)
	if err != nil || string(result) != `{"ok": true}` || f.calls.Load() != 3 {
		t.Fatalf("result %s, err %v, %d calls", result, err, f.calls.Load())
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("two QUEUE_FULL retries took %s, not 2 × 50 ms", waited)
	}

	f.calls.Store(0)
	f.fail = []error{detailed(codes.InvalidArgument, ReasonInvalidArgs, &errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "args_json", Description: "not JSON"}},
	})}
	_, err = c.RunText(context.Background(), "m", "x", nil)
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonInvalidArgs || e.Domain != "tms" || e.Metadata["model"] != "m" ||
		len(e.FieldViolations) != 1 || e.FieldViolations[0].Field != "args_json" || e.HasRetryDelay ||
		e.Attempts != 1 || f.calls.Load() != 1 {
		t.Fatalf("err %+v, %d calls", err, f.calls.Load())
	}
}

// lateWorker is a server of two workers whose second starts listening late: its first
// answers the connections of Dial's search (8 x 2 + 8) alone, then every other one.
type lateWorker struct {
	tmsv1.UnimplementedModelServiceServer
	calls atomic.Int32
}

func (f *lateWorker) GetWorkerInfo(context.Context, *tmsv1.GetWorkerInfoRequest) (*tmsv1.GetWorkerInfoResponse, error) {
	pid := int64(1)
	if n := f.calls.Add(1); n > int32(attempts(2, true)) && n%2 == 0 {
		pid = 2
	}
	return &tmsv1.GetWorkerInfoResponse{InstanceId: "late", Pid: pid, WorkerIndex: int32(pid - 1), WorkerCount: 2}, nil
}

func TestAWorkerStartedLateIsFoundSoonerThanTheRefreshInterval(t *testing.T) {
	f := &lateWorker{}
	c := serveFake(t, f, WithRefreshInterval(time.Minute))
	if n := len(c.Workers()); n != 1 {
		t.Fatalf("%d workers before the second is up", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(c.Workers()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the second worker was not found within 5 s; the refresh interval is a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Once every worker is held the search waits the refresh interval again: no more
	// connections are opened.
	calls := f.calls.Load()
	time.Sleep(time.Second)
	if f.calls.Load() != calls {
		t.Fatalf("%d more GetWorkerInfo calls with every worker held", f.calls.Load()-calls)
	}
}

// busyWorker is a one-worker ModelService on loopback whose RunText answers only when its
// caller gives up.
type busyWorker struct {
	fakeWorker
	started chan struct{}
}

func (f *busyWorker) RunText(ctx context.Context, _ *tmsv1.RunTextRequest) (*tmsv1.RunTextResponse, error) {
	f.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// isClosedError says whether err is what a call ended by Close, or made after it, returns.
func isClosedError(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == codes.Canceled && e.Method == "RunText" &&
		strings.Contains(e.Message, "the client is closed")
}

func TestCloseEndsTheCallsInFlightAtOnce(t *testing.T) {
	f := &busyWorker{started: make(chan struct{}, 4)}
	c := serveFake(t, f)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := c.RunText(context.Background(), "m", "x", nil)
			errs <- err
		}()
	}
	for range 4 {
		<-f.started
	}
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-errs; !isClosedError(err) {
			t.Fatalf("a call in flight ended with %v", err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the calls in flight ended %s after Close, not at once (the timeout is 5 s)", took)
	}
}

func TestACallOnAClosedClientFailsAtOnce(t *testing.T) {
	c := serveFake(t, &fakeWorker{})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.RunText(context.Background(), "m", "x", nil)
	if !isClosedError(err) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("a call on a closed client: %v after %s", err, time.Since(start))
	}
	for _, err = range c.RunImageStream(context.Background(), "m", grayFrames(1), nil) {
	}
	if e := (*Error)(nil); !errors.As(err, &e) || e.Code != codes.Canceled || e.Method != streamMethod {
		t.Fatalf("a stream on a closed client: %v", err)
	}
}
