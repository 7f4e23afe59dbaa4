package tmsclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

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
	return errors.As(err, &e) && e.Code == codes.FailedPrecondition && e.Method == "RunText" &&
		strings.Contains(e.Message, "this client is closed")
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
	if e := (*Error)(nil); !errors.As(err, &e) || e.Code != codes.FailedPrecondition || e.Method != streamMethod {
		t.Fatalf("a stream on a closed client: %v", err)
	}
}

// reloadingServer is a server of two workers, told apart by connection (its first is pid 1,
// every later one pid 2), whose models and last reload done a test sets per worker. RunText
// answers with the pid, and its load report carries the reload as TMS's do.
type reloadingServer struct {
	tmsv1.UnimplementedModelServiceServer

	mu      sync.Mutex
	pids    map[string]int64 // peer address -> the worker it reached
	models  map[int64][]string
	reloads map[int64]int64
	asked   map[int64]int // GetWorkerInfo calls, by worker
}

func (f *reloadingServer) worker(ctx context.Context) int64 {
	p, _ := peer.FromContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	pid, ok := f.pids[p.Addr.String()]
	if !ok {
		pid = int64(min(len(f.pids)+1, 2))
		f.pids[p.Addr.String()] = pid
	}
	return pid
}

// timesAsked is how many times worker pid answered GetWorkerInfo.
func (f *reloadingServer) timesAsked(pid int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[pid]
}

// set has worker pid serve models once it has done reload.
func (f *reloadingServer) set(pid int64, reload int64, models ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.models[pid], f.reloads[pid] = models, reload
}

func (f *reloadingServer) GetWorkerInfo(ctx context.Context, _ *tmsv1.GetWorkerInfoRequest) (*tmsv1.GetWorkerInfoResponse, error) {
	pid := f.worker(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked[pid]++
	return &tmsv1.GetWorkerInfoResponse{
		InstanceId: "reloading", Pid: pid, WorkerIndex: int32(pid - 1), WorkerCount: 2,
		Models: f.models[pid], Reload: f.reloads[pid],
	}, nil
}

func (f *reloadingServer) RunText(ctx context.Context, _ *tmsv1.RunTextRequest) (*tmsv1.RunTextResponse, error) {
	pid := f.worker(ctx)
	f.mu.Lock()
	report := EncodeORCA(map[string]float64{"in_flight": 1, "reload": float64(f.reloads[pid])})
	f.mu.Unlock()
	_ = grpc.SetTrailer(ctx, metadata.Pairs(loadKey, string(report), identityKey, fmt.Sprintf("reloading/%d", pid)))
	return &tmsv1.RunTextResponse{ResultJson: fmt.Sprintf(`{"pid": %d}`, pid)}, nil
}

// pidsOf are the workers ten calls of model reach.
func pidsOf(t *testing.T, c *Client, model string) map[int64]bool {
	t.Helper()
	pids := map[int64]bool{}
	for range 10 {
		result, err := c.RunText(context.Background(), model, "x", nil)
		var reply struct{ PID int64 }
		if err == nil {
			err = json.Unmarshal(result, &reply)
		}
		if err != nil {
			t.Fatal(err)
		}
		pids[reply.PID] = true
	}
	return pids
}

// eventually waits up to 2 s for ten calls of model to reach want, well within the refresh
// interval of a minute.
func eventually(t *testing.T, c *Client, model string, want map[int64]bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for got := pidsOf(t, c, model); !maps.Equal(got, want); got = pidsOf(t, c, model) {
		if time.Now().After(deadline) {
			t.Fatalf("calls of %s reach %v, not %v, 2 s after the reload", model, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCallsFollowAModelAReloadMoves(t *testing.T) {
	f := &reloadingServer{
		pids: map[string]int64{}, models: map[int64][]string{}, reloads: map[int64]int64{}, asked: map[int64]int{},
	}
	f.set(1, 0, "late", "other")
	f.set(2, 0, "other") // "late" failed to load there
	c := serveFake(t, f, WithBalancer(RoundRobin()), WithRefreshInterval(time.Minute))
	if got := pidsOf(t, c, "late"); !maps.Equal(got, map[int64]bool{1: true}) {
		t.Fatalf("late reached %v before the reload", got)
	}
	// Worker 1 has done reload 1 and says so; worker 2, asked then, has not yet: it is asked
	// again (it draws no call of "late" that would say so) until it has.
	f.set(1, 1, "late", "other")
	before := f.timesAsked(2)
	pidsOf(t, c, "late")
	for deadline := time.Now().Add(2 * time.Second); f.timesAsked(2) == before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("worker 2 was not asked which models it serves after worker 1 said it had reloaded")
		}
	}
	if got := pidsOf(t, c, "late"); !maps.Equal(got, map[int64]bool{1: true}) {
		t.Fatalf("late reached %v before worker 2 had done the reload", got)
	}
	f.set(2, 1, "late", "other")
	eventually(t, c, "late", map[int64]bool{1: true, 2: true})
	for _, w := range c.Workers() {
		if !slices.Equal(w.Models(), []string{"late", "other"}) {
			t.Fatalf("%v serves %v", w, w.Models())
		}
	}
	// Reload 2 takes "late" off worker 1: its next answer says so, and calls leave it.
	f.set(2, 2, "late", "other")
	f.set(1, 2, "other")
	eventually(t, c, "late", map[int64]bool{2: true})
}
