package tmsclient

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeClient is a Client over a pool holding ws (no connections): invoke is driven with a
// scripted call.
func fakeClient(ws []*Worker, opts ...Option) *Client {
	o := defaultOptions()
	o.balancer = RoundRobin()
	o.retry.Initial, o.retry.Max = time.Millisecond, time.Millisecond
	for _, opt := range opts {
		opt(&o)
	}
	p := newPool("fake:1", o)
	for i, w := range ws {
		w.InstanceID = "server"
		w.Index = int32(i)
		p.workers[workerKey{w.InstanceID, w.PID}] = w
	}
	return &Client{pool: p, opts: o}
}

func TestRoutesAModelToTheWorkersThatHaveIt(t *testing.T) {
	ws := workers(3)
	ws[0].models, ws[1].models, ws[2].models = []string{"face"}, []string{"edges"}, []string{"face"}
	c := fakeClient(ws)
	for range 10 {
		if w := c.choose("edges", nil); w != ws[1] {
			t.Fatalf("edges went to %v", w)
		}
		if w := c.choose("face", nil); w == ws[1] {
			t.Fatal("face went to the edges worker")
		}
	}
	if w := c.choose("nobody_has_it", nil); w == nil {
		t.Fatal("a model no worker lists goes to any worker, which says it has no such model")
	}
	if w := c.choose("face", map[*Worker]bool{ws[0]: true}); w != ws[2] {
		t.Fatalf("a retry went to %v, not the other worker with the model", w)
	}
	if w := c.choose("edges", map[*Worker]bool{ws[1]: true}); w != ws[1] {
		t.Fatal("with no other worker left, a tried one is picked again")
	}
}

// script fails the calls to some workers with a code and answers the others.
func script(failing map[*Worker]codes.Code, calls *[]*Worker, trailers map[*Worker]metadata.MD) func(context.Context, *Worker, ...grpc.CallOption) error {
	return func(_ context.Context, w *Worker, opts ...grpc.CallOption) error {
		*calls = append(*calls, w)
		for _, o := range opts {
			if t, ok := o.(grpc.TrailerCallOption); ok && trailers[w] != nil {
				*t.TrailerAddr = trailers[w]
			}
		}
		if code, ok := failing[w]; ok {
			return status.Error(code, "scripted")
		}
		return nil
	}
}

func TestUnavailableIsRetriedElsewhereAndDropsTheWorker(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws)
	var calls []*Worker
	err := c.invoke(context.Background(), "RunImage", "m", script(map[*Worker]codes.Code{ws[0]: codes.Unavailable}, &calls, nil))
	if err != nil || len(calls) != 2 || calls[0] != ws[0] || calls[1] != ws[1] {
		t.Fatalf("err %v, calls %v", err, calls)
	}
	if got := c.Workers(); len(got) != 1 || got[0] != ws[1] {
		t.Fatalf("workers after the drop: %v", got)
	}
}

func TestCancelledIsRetriedButKeepsTheWorker(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws)
	var calls []*Worker
	err := c.invoke(context.Background(), "RunImage", "m", script(map[*Worker]codes.Code{ws[0]: codes.Canceled}, &calls, nil))
	if err != nil || len(calls) != 2 || len(c.Workers()) != 2 {
		t.Fatalf("err %v, calls %v, workers %v", err, calls, c.Workers())
	}
}

func TestOtherCodesAreNotRetried(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws)
	var calls []*Worker
	err := c.invoke(context.Background(), "RunImage", "m", script(map[*Worker]codes.Code{ws[0]: codes.NotFound}, &calls, nil))
	e, ok := err.(*Error)
	if !ok || e.Code != codes.NotFound || e.Attempts != 1 || len(calls) != 1 {
		t.Fatalf("err %#v, calls %v", err, calls)
	}
}

func TestRetriesStopAtTheAttemptsOfThePolicy(t *testing.T) {
	ws := workers(3)
	c := fakeClient(ws)
	var calls []*Worker
	failing := map[*Worker]codes.Code{ws[0]: codes.Canceled, ws[1]: codes.Canceled, ws[2]: codes.Canceled}
	err := c.invoke(context.Background(), "RunImage", "m", script(failing, &calls, nil))
	if e, ok := err.(*Error); !ok || e.Code != codes.Canceled || e.Attempts != 5 || len(calls) != 5 {
		t.Fatalf("err %v, %d calls", err, len(calls))
	}
	calls = nil
	c.opts.retry = NoRetry()
	if err := c.invoke(context.Background(), "RunImage", "m", script(failing, &calls, nil)); err == nil || len(calls) != 1 {
		t.Fatalf("NoRetry: err %v, %d calls", err, len(calls))
	}
}

func TestTrailersFeedTheLoadAndDropAnImpostor(t *testing.T) {
	ws := workers(2)
	ws[0].PID, ws[1].PID = 10, 11
	c := fakeClient(ws)
	trailers := map[*Worker]metadata.MD{
		ws[0]: metadata.Pairs(loadKey, string(EncodeORCA(map[string]float64{"in_flight": 3, "queued": 1})), identityKey, "server/10"),
		ws[1]: metadata.Pairs(identityKey, "server/99"), // the connection now reaches another process
	}
	var calls []*Worker
	for range 2 {
		if err := c.invoke(context.Background(), "RunImage", "m", script(nil, &calls, trailers)); err != nil {
			t.Fatal(err)
		}
	}
	if report, _, ok := ws[0].Load(); !ok || report.Total() != 4 {
		t.Fatalf("load %v %v", report, ok)
	}
	if got := c.Workers(); len(got) != 1 || got[0] != ws[0] {
		t.Fatalf("workers %v: the impostor was kept", got)
	}
}

func TestAReportOfAReloadHasTheServersWorkersAskedAgain(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws)
	reload := func(n float64) metadata.MD {
		return metadata.Pairs(loadKey, string(EncodeORCA(map[string]float64{"in_flight": 1, "reload": n})))
	}
	asked := func() int {
		c.pool.mu.Lock()
		defer c.pool.mu.Unlock()
		return len(c.pool.changed)
	}
	c.observe(ws[0], reload(0))
	if n := asked(); n != 0 {
		t.Fatalf("%d workers to ask with no reload reported", n)
	}
	c.observe(ws[0], reload(2))
	if n := asked(); n != 2 || c.pool.reloads["server"] != 2 || len(c.pool.wake) != 1 {
		t.Fatalf("after reload 2: %d workers to ask, reload %d, woken %v", n, c.pool.reloads["server"], len(c.pool.wake) == 1)
	}
	ws[0].follow([]string{"m"}, 2) // as the background search does once it asked
	c.pool.mu.Lock()
	clear(c.pool.changed)
	c.pool.mu.Unlock()
	c.observe(ws[0], reload(2))
	if n := asked(); n != 0 {
		t.Fatalf("%d workers to ask after a report of the reload the worker said its models at", n)
	}
	c.observe(ws[1], reload(2)) // a worker asked before it had done the reload
	if n := asked(); n != 1 {
		t.Fatalf("%d workers to ask, not the one behind alone", n)
	}
}

func TestADefaultDeadlineIsSet(t *testing.T) {
	c := fakeClient(workers(1), WithTimeout(time.Minute))
	var deadline time.Time
	err := c.invoke(context.Background(), "RunImage", "m", func(ctx context.Context, _ *Worker, _ ...grpc.CallOption) error {
		deadline, _ = ctx.Deadline()
		return nil
	})
	if left := time.Until(deadline); err != nil || left < 50*time.Second || left > time.Minute {
		t.Fatalf("deadline in %s", left)
	}
}

func TestEveryAttemptSentRecordsItsLatency(t *testing.T) {
	ws := workers(1)
	c := fakeClient(ws, WithRetry(NoRetry()))
	timesOut := func(ctx context.Context, _ *Worker, _ ...grpc.CallOption) error {
		<-ctx.Done() // a stopped worker: no answer within the deadline
		return status.FromContextError(ctx.Err()).Err()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.invoke(ctx, "RunImage", "m", timesOut); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err %v", err)
	}
	at := time.Now() // read at one time: the latency fades as time goes by
	if got := ws[0].latencyAsOf(at); got < 50*time.Millisecond {
		t.Fatalf("latency %v after an attempt that timed out at 50 ms", got)
	}
	before := ws[0].latencyAsOf(at)
	ended, end := context.WithCancel(context.Background())
	end() // gRPC sends nothing on an ended context: no latency to learn
	_ = c.invoke(ended, "RunImage", "m", func(context.Context, *Worker, ...grpc.CallOption) error {
		return status.Error(codes.Canceled, "context canceled")
	})
	if got := ws[0].latencyAsOf(at); got != before {
		t.Fatalf("latency %v, was %v: an attempt never sent counted", got, before)
	}
}

// failWith fails the calls to some workers with the errors given and answers the others.
func failWith(failing map[*Worker]error, calls *[]*Worker, at *[]time.Time) func(context.Context, *Worker, ...grpc.CallOption) error {
	return func(_ context.Context, w *Worker, _ ...grpc.CallOption) error {
		*calls = append(*calls, w)
		*at = append(*at, time.Now())
		return failing[w]
	}
}

func TestRetryInfoIsRetriedElsewhereAfterItsDelay(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws, WithRetry(RetryPolicy{Attempts: 3, Codes: nil})) // no code retried
	var calls []*Worker
	var at []time.Time
	queueFull := detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(100*time.Millisecond))
	err := c.invoke(context.Background(), "RunImage", "m", failWith(map[*Worker]error{ws[0]: queueFull}, &calls, &at))
	if err != nil || len(calls) != 2 || calls[1] != ws[1] {
		t.Fatalf("err %v, calls %v", err, calls)
	}
	if waited := at[1].Sub(at[0]); waited < 100*time.Millisecond {
		t.Fatalf("retried after %s, not the 100 ms RetryInfo asks", waited)
	}
	if len(c.Workers()) != 2 {
		t.Fatal("QUEUE_FULL dropped the worker")
	}
}

func TestDrainingIsRetriedAtOnceAndDropsTheWorker(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws, WithRetry(RetryPolicy{Attempts: 2, Initial: time.Hour, Max: time.Hour, Codes: nil}))
	var calls []*Worker
	var at []time.Time
	draining := detailed(codes.Unavailable, ReasonDraining, retryInfo(0))
	err := c.invoke(context.Background(), "RunImage", "m", failWith(map[*Worker]error{ws[0]: draining}, &calls, &at))
	if err != nil || len(calls) != 2 || calls[1] != ws[1] || at[1].Sub(at[0]) > time.Second {
		t.Fatalf("err %v, calls %v", err, calls)
	}
	if got := c.Workers(); len(got) != 1 || got[0] != ws[1] {
		t.Fatalf("workers after DRAINING: %v", got)
	}
}

func TestWithoutRetryInfoOtherCodesAreNotRetried(t *testing.T) {
	ws := workers(2)
	c := fakeClient(ws)
	for _, failure := range []error{
		status.Error(codes.ResourceExhausted, "message larger than max"), // gRPC's own, no details
		detailed(codes.InvalidArgument, ReasonImageTooLarge, &errdetails.BadRequest{}),
		detailed(codes.Internal, ReasonModelFailed),
	} {
		var calls []*Worker
		var at []time.Time
		err := c.invoke(context.Background(), "RunImage", "m", failWith(map[*Worker]error{ws[0]: failure, ws[1]: failure}, &calls, &at))
		if e, ok := err.(*Error); !ok || e.Attempts != 1 || len(calls) != 1 {
			t.Fatalf("%v: err %v, %d calls", failure, err, len(calls))
		}
	}
}

func TestRetryInfoStaysWithinTheBudget(t *testing.T) {
	ws := workers(2)
	queueFull := detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(time.Millisecond))
	failing := map[*Worker]error{ws[0]: queueFull, ws[1]: queueFull}
	c := fakeClient(ws)
	var calls []*Worker
	var at []time.Time
	err := c.invoke(context.Background(), "RunImage", "m", failWith(failing, &calls, &at))
	if e, ok := err.(*Error); !ok || e.Reason != ReasonQueueFull || e.Attempts != 5 || len(calls) != 5 {
		t.Fatalf("attempts: err %v, %d calls", err, len(calls))
	}

	calls, at = nil, nil
	c.opts.retry = NoRetry()
	if err := c.invoke(context.Background(), "RunImage", "m", failWith(failing, &calls, &at)); err == nil || len(calls) != 1 {
		t.Fatalf("NoRetry: err %v, %d calls", err, len(calls))
	}

	calls, at = nil, nil
	c.opts.retry = DefaultRetry()
	slow := detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err = c.invoke(ctx, "RunImage", "m", failWith(map[*Worker]error{ws[0]: slow, ws[1]: slow}, &calls, &at))
	if e, ok := err.(*Error); !ok || e.RetryDelay != time.Minute || len(calls) != 1 || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("deadline: err %v, %d calls in %s", err, len(calls), time.Since(start))
	}
}
