package tmsclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

// stallingListener hands the gRPC server every connection but those stall names (by their
// order, from 0): those it holds open and never reads, as a stopped worker's (the kernel
// completes the handshake, nothing answers).
type stallingListener struct {
	net.Listener
	stall    func(n int) bool
	accepted atomic.Int32

	mu      sync.Mutex
	stalled []net.Conn
}

func (l *stallingListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.stall(int(l.accepted.Add(1)) - 1) {
			return conn, nil
		}
		l.mu.Lock()
		l.stalled = append(l.stalled, conn)
		l.mu.Unlock()
	}
}

func (l *stallingListener) Close() error {
	l.mu.Lock()
	for _, conn := range l.stalled {
		_ = conn.Close()
	}
	l.mu.Unlock()
	return l.Listener.Close()
}

// serveStalling serves f on loopback behind a stallingListener.
func serveStalling(t *testing.T, f tmsv1.ModelServiceServer, stall func(n int) bool) *stallingListener {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &stallingListener{Listener: inner, stall: stall}
	s := grpc.NewServer()
	tmsv1.RegisterModelServiceServer(s, f)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis
}

// halfStopped is the live worker of a server of two whose other worker is stopped (of one
// when alone): every connection that is answered reaches worker 1, after delay.
type halfStopped struct {
	tmsv1.UnimplementedModelServiceServer
	delay time.Duration
	alone bool
}

func (f *halfStopped) GetWorkerInfo(ctx context.Context, _ *tmsv1.GetWorkerInfoRequest) (*tmsv1.GetWorkerInfoResponse, error) {
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	count := int32(2)
	if f.alone {
		count = 1
	}
	return &tmsv1.GetWorkerInfoResponse{InstanceId: "half", Pid: 1, WorkerIndex: 0, WorkerCount: count}, nil
}

// dialAt dials lis with opts, closing the client at the end of the test; it returns how long
// Dial took. WithWaitForServer(true) spares the start its probe of whether lis refuses
// connections: a connection of its own, which the tests would count.
func dialAt(t *testing.T, lis net.Listener, opts ...Option) (*Client, time.Duration, error) {
	t.Helper()
	start := time.Now()
	c, err := Dial(context.Background(), lis.Addr().String(), append([]Option{WithWaitForServer(true)}, opts...)...)
	took := time.Since(start)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, took, err
}

// quickAnswers shortens the start's wait for an answer for the rest of the test.
func quickAnswers(t *testing.T, d time.Duration) {
	was := answerWait
	answerWait = d
	t.Cleanup(func() { answerWait = was })
}

func holdsOnlyTheLiveWorker(t *testing.T, c *Client) {
	t.Helper()
	if ws := c.Workers(); len(ws) != 1 || ws[0].PID != 1 {
		t.Fatalf("workers %v, not the live one alone", ws)
	}
}

func TestAStalledWorkerCostsTheStartASecond(t *testing.T) {
	// The connect timeout is the default 10 s; the stopped worker gets every other connection.
	lis := serveStalling(t, &halfStopped{}, func(n int) bool { return n%2 == 1 })
	c, took, err := dialAt(t, lis)
	if err != nil {
		t.Fatal(err)
	}
	if took > 2500*time.Millisecond {
		t.Fatalf("the start took %s with a worker stalled, not about 1 s", took)
	}
	holdsOnlyTheLiveWorker(t, c)
}

func TestAStalledFirstConnectionDoesNotFailTheStart(t *testing.T) {
	quickAnswers(t, 100*time.Millisecond)
	lis := serveStalling(t, &halfStopped{}, func(n int) bool { return n%2 == 0 })
	c, took, err := dialAt(t, lis, WithConnectTimeout(2*time.Second))
	if err != nil {
		t.Fatalf("the start failed after %s: %v", took, err)
	}
	if took > time.Second {
		t.Fatalf("the start took %s, not about 2 x 100 ms", took)
	}
	holdsOnlyTheLiveWorker(t, c)
}

func TestASlowServerIsAnsweredWithinHalfTheConnectTimeout(t *testing.T) {
	quickAnswers(t, 120*time.Millisecond)
	lis := serveStalling(t, &halfStopped{delay: 250 * time.Millisecond, alone: true}, func(int) bool { return false })
	c, took, err := dialAt(t, lis, WithConnectTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// 120 ms is too short, four times (two or three on a busy machine) while half the second
	// would be left after it; the next connection waits all that is left and is answered.
	if n := lis.accepted.Load(); n < 3 || n > 5 || took < 500*time.Millisecond || took > 2*time.Second {
		t.Fatalf("%d connections in %s", n, took)
	}
	holdsOnlyTheLiveWorker(t, c)
}

func TestAStartNothingAnswersFailsAtTheConnectTimeout(t *testing.T) {
	quickAnswers(t, 120*time.Millisecond)
	lis := serveStalling(t, &halfStopped{}, func(int) bool { return true })
	_, took, err := dialAt(t, lis, WithConnectTimeout(time.Second))
	var e *Error
	want := "no TMS worker answered at " + lis.Addr().String() + " (is it running, and does it serve TLS"
	if !errors.As(err, &e) || e.Code != codes.Unavailable || !strings.HasPrefix(e.Message, want) ||
		status.Convert(err).Message() != e.Message {
		t.Fatalf("err %v", err)
	}
	// 120 ms four times (two or three on a busy machine), then the rest of the second (and
	// maybe one of the background search's, begun as Dial gave up).
	if n := lis.accepted.Load(); n < 3 || n > 6 || took < 900*time.Millisecond || took > 2*time.Second {
		t.Fatalf("%d connections, failed after %s", n, took)
	}
	// A ctx that ends first has the start fail with its own code.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = Dial(ctx, lis.Addr().String(), WithWaitForServer(true))
	if !errors.As(err, &e) || e.Code != codes.DeadlineExceeded || !strings.HasPrefix(e.Message, want) {
		t.Fatalf("err %v", err)
	}
}

func TestABackgroundSearchEndsAtAConnectionNotAnswered(t *testing.T) {
	lis := serveStalling(t, &halfStopped{}, func(n int) bool { return n%2 == 1 })
	c, _, err := dialAt(t, lis, WithConnectTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	holdsOnlyTheLiveWorker(t, c)
	// With the live worker held, a search reaching the stopped one ends there: at most two
	// connections (one answered by the worker held, one not answered), not 4 x 2 + 4.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := lis.accepted.Load()
	if err := c.pool.search(ctx, false); err != nil {
		t.Fatal(err)
	}
	if n := lis.accepted.Load() - before; n < 1 || n > 2 {
		t.Fatalf("the search opened %d connections", n)
	}
}

func TestACallWaitsForASearchUnderWayNoLongerThanItsDeadline(t *testing.T) {
	// The first connection reaches the live worker; every later one stalls.
	quickAnswers(t, 100*time.Millisecond)
	lis := serveStalling(t, &halfStopped{}, func(n int) bool { return n > 0 })
	c, _, err := dialAt(t, lis)
	if err != nil {
		t.Fatal(err)
	}
	// With the worker dropped the background search runs at once, and waits 5 s for a
	// stalled connection's answer.
	before := lis.accepted.Load()
	c.pool.drop(c.Workers()[0])
	deadline := time.Now().Add(5 * time.Second)
	for lis.accepted.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("the background search opened no connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.RunText(ctx, "m", "x", nil)
	took := time.Since(start)
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.Unavailable || took > time.Second {
		t.Fatalf("a call with a 300 ms deadline failed with %v after %s", err, took)
	}
}

// refusingAddress is a loopback address where nothing listens: connections to it are refused.
func refusingAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func TestARefusedConnectionFailsTheStartAtOnce(t *testing.T) {
	addr := refusingAddress(t)
	start := time.Now()
	_, err := Dial(context.Background(), addr) // the default 10 s connect timeout
	took := time.Since(start)
	var e *Error
	want := "connection refused at " + addr + ": is tms-server running?"
	if !errors.As(err, &e) || e.Code != codes.Unavailable || e.Message != want {
		t.Fatalf("err %v", err)
	}
	if took > time.Second {
		t.Fatalf("the start failed after %s, not at once", took)
	}
}

// "h1:p1,h2:p2" reads as a host "h1:p1,h2" that never resolves: Dial waited the whole connect
// timeout, then said no worker answered at that "address".
func TestSeveralAddressesInOneTargetAreRefusedAtOnce(t *testing.T) {
	for _, target := range []string{"127.0.0.1:50051,127.0.0.1:50052", "dns:///h1:50051,h2:50051"} {
		start := time.Now()
		_, err := Dial(context.Background(), target)
		var e *Error
		want := fmt.Sprintf("target %q is several addresses in one string; give one 'host:port', "+
			"or 'dns:///name:port' for every address a name resolves to", target)
		if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Message != want {
			t.Fatalf("%s: err %v", target, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("%s: the start failed after %s, not at once", target, took)
		}
	}
}

func TestWaitForServerWaitsForOneThatStartsLater(t *testing.T) {
	addr := refusingAddress(t)
	dialed := make(chan error, 1)
	go func() {
		c, err := Dial(context.Background(), addr, WithWaitForServer(true), WithConnectTimeout(10*time.Second))
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
		}
		dialed <- err
	}()
	select {
	case err := <-dialed:
		t.Fatalf("the start ended before the server started: %v", err)
	case <-time.After(time.Second):
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	tmsv1.RegisterModelServiceServer(s, &halfStopped{alone: true})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
}

func TestBehindAProxyARefusedConnectionIsWaitedFor(t *testing.T) {
	addr := refusingAddress(t)
	was := proxyFromEnvironment
	var asked atomic.Value
	proxyFromEnvironment = func(r *http.Request) (*url.URL, error) {
		asked.Store(r.URL.String())
		return url.Parse("http://proxy.invalid:3128")
	}
	t.Cleanup(func() { proxyFromEnvironment = was })
	start := time.Now()
	_, err := Dial(context.Background(), addr, WithConnectTimeout(500*time.Millisecond))
	took := time.Since(start)
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(e.Message, "no TMS worker answered") || took < 450*time.Millisecond {
		t.Fatalf("failed after %s with %v, not at the connect timeout", took, err)
	}
	if asked.Load() != "https://"+addr {
		t.Fatalf("asked the proxy of %v", asked.Load())
	}
}
