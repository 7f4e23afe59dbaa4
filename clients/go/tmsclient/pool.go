package tmsclient

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

// Worker is one worker process of a server, reached over a connection of its own.
type Worker struct {
	Address     string // the address the connection was opened to
	InstanceID  string // the server (supervisor) the worker belongs to
	PID         int64
	Index       int32 // the worker's index among its server's WorkerCount workers
	WorkerCount int32
	Device      string

	conn     *grpc.ClientConn
	stub     tmsv1.ModelServiceClient
	inFlight atomic.Int64

	mu        sync.Mutex
	models    []string // the models it serves; empty: every model
	reload    int64    // the server's last reload it had done when it said models
	load      LoadReport
	loadedAt  time.Time
	latency   time.Duration
	latencyAt time.Time
}

// InFlight is this client's calls on the worker now.
func (w *Worker) InFlight() int { return int(w.inFlight.Load()) }

// Load is the load the worker last reported, and when; ok is false before its first report.
func (w *Worker) Load() (report LoadReport, at time.Time, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.load, w.loadedAt, !w.loadedAt.IsZero()
}

func (w *Worker) setLoad(r LoadReport) {
	w.mu.Lock()
	w.load, w.loadedAt = r, time.Now()
	w.mu.Unlock()
}

// latencyFade is the time constant over which a worker's latency fades while it records no
// call: the balancer steers away from a worker with a high latency, so that worker may get no
// call that could bring the latency down; fading it makes a worker not picked (one stopped
// and resumed, or once slow) be tried again in time. Finagle's peak EWMA default.
const latencyFade = 10 * time.Second

// Latency is the worker's recent call latency, a moving average of this client's attempts
// on it (answered or failed): a slower one counts at once, faster ones pull it down over
// about a second, and without calls it fades toward zero over about ten seconds. 0 before
// its first attempt ends.
func (w *Worker) Latency() time.Duration { return w.latencyAsOf(time.Now()) }

// latencyAsOf is Latency at now: the latency last recorded, faded by the time since.
func (w *Worker) latencyAsOf(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fadedLatency(now)
}

// fadedLatency is the latency recorded at latencyAt faded to now; w.mu must be held.
func (w *Worker) fadedLatency(now time.Time) time.Duration {
	since := max(now.Sub(w.latencyAt), 0)
	return time.Duration(float64(w.latency) * math.Exp(-since.Seconds()/latencyFade.Seconds()))
}

// recordLatency folds in an attempt that took d and ended at now.
func (w *Worker) recordLatency(d time.Duration, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	current := w.fadedLatency(now)
	if d >= current {
		w.latency = d
	} else {
		weight := 1 - math.Exp(-max(now.Sub(w.latencyAt), 0).Seconds())
		w.latency = current + time.Duration(float64(d-current)*weight)
	}
	w.latencyAt = now
}

// Models are the models the worker serves (empty: every model), as it last said: when the
// client found it, and again after each reload of its server (see GetWorkerInfoResponse.reload).
func (w *Worker) Models() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.models)
}

// follow takes in the models the worker serves, as it said once it had done its server's
// reload number reload.
func (w *Worker) follow(models []string, reload int64) {
	w.mu.Lock()
	w.models, w.reload = models, reload
	w.mu.Unlock()
}

// reloadDone is the server's last reload the worker had done when it said its models.
func (w *Worker) reloadDone() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reload
}

func (w *Worker) serves(model string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return model == "" || len(w.models) == 0 || slices.Contains(w.models, model)
}

func (w *Worker) String() string {
	return fmt.Sprintf("Worker(%s pid=%d index=%d/%d in_flight=%d)", w.Address, w.PID, w.Index,
		w.WorkerCount, w.InFlight())
}

type workerKey struct {
	instance string
	pid      int64
}

// pool holds one connection per worker process and finds missing ones: at Dial, every
// refresh interval (every soon while some are missing), and at once after a drop. After a
// reload it asks the workers of the server that reloaded again which models they serve.
type pool struct {
	target string
	opts   options
	dial   []grpc.DialOption

	mu      sync.Mutex
	workers map[workerKey]*Worker
	counts  map[string]int32 // address -> the worker count its server last said
	reloads map[string]int64 // instance id -> the last reload its workers reported
	changed map[*Worker]bool // workers to ask again which models they serve (a reload)
	closed  bool
	whole   bool // the last search found every worker at every address

	searching chan struct{} // one search at a time: holds a token while one runs
	wake      chan struct{}
	life      context.Context // cancelled by close: ends the background search
	end       context.CancelFunc
	done      chan struct{}
}

func newPool(target string, o options) *pool {
	creds := insecure.NewCredentials()
	if o.tls != nil {
		creds = credentials.NewTLS(o.tls)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(o.maxMessage), grpc.MaxCallSendMsgSize(o.maxMessage)),
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{o.token}))
	}
	life, end := context.WithCancel(context.Background())
	return &pool{
		target: target, opts: o, dial: dial,
		workers: map[workerKey]*Worker{}, counts: map[string]int32{},
		reloads: map[string]int64{}, changed: map[*Worker]bool{},
		searching: make(chan struct{}, 1), wake: make(chan struct{}, 1),
		life: life, end: end, done: make(chan struct{}),
	}
}

// bearer sends the token on every call.
type bearer struct{ token string }

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return false }

// snapshot is the workers serving model (every worker for model "").
func (p *pool) snapshot(model string) []*Worker {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Worker, 0, len(p.workers))
	for _, w := range p.workers {
		if w.serves(model) {
			out = append(out, w)
		}
	}
	// A stable order, so that RoundRobin goes round.
	slices.SortFunc(out, func(a, b *Worker) int {
		if c := strings.Compare(a.InstanceID, b.InstanceID); c != 0 {
			return c
		}
		return int(a.Index - b.Index)
	})
	return out
}

// drop forgets w, closes its connection once its calls are done, and wakes the search.
func (p *pool) drop(w *Worker) {
	p.mu.Lock()
	key := workerKey{w.InstanceID, w.PID}
	held := p.workers[key] == w
	if held {
		delete(p.workers, key)
	}
	delete(p.changed, w)
	p.mu.Unlock()
	if !held {
		return
	}
	if w.conn != nil {
		go func() { // other calls may still be on it: let them end first
			time.Sleep(time.Second)
			_ = w.conn.Close()
		}()
	}
	p.wakeUp()
}

// wakeUp has the background search run at once.
func (p *pool) wakeUp() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// reloaded notes that w reports having done its server's reload number n, a later one than
// when it said its models: the background search asks it again at once which models it
// serves, and, the first time its server reports n, every worker of that server (one asked
// before it had done the reload is asked again, and once its own reports say it has done it,
// at once).
func (p *pool) reloaded(w *Worker, n int64) {
	p.mu.Lock()
	if n > p.reloads[w.InstanceID] {
		p.reloads[w.InstanceID] = n
		for _, other := range p.workers {
			if other.InstanceID == w.InstanceID {
				p.changed[other] = true
			}
		}
	}
	p.changed[w] = true
	p.mu.Unlock()
	p.wakeUp()
}

// follow asks each worker whose server has reloaded which models it serves now, waiting up
// to 5 s for each answer. One that does not answer, or has not done its server's last reload
// yet, is asked again next round; one that is unavailable, or that another process answers
// for, is dropped.
func (p *pool) follow(ctx context.Context) {
	p.mu.Lock()
	changed := make([]*Worker, 0, len(p.changed))
	for w := range p.changed {
		if p.workers[workerKey{w.InstanceID, w.PID}] == w {
			changed = append(changed, w)
		} else {
			delete(p.changed, w) // dropped: its connection is closing
		}
	}
	p.mu.Unlock()
	for _, w := range changed {
		callCtx, cancel := context.WithTimeout(ctx, min(p.opts.connectTimeout, 5*time.Second))
		info, err := w.stub.GetWorkerInfo(callCtx, &tmsv1.GetWorkerInfoRequest{})
		cancel()
		switch {
		case status.Code(err) == codes.Unavailable:
			p.drop(w)
			continue
		case err != nil:
			continue
		case info.GetInstanceId() != w.InstanceID || info.GetPid() != w.PID:
			p.drop(w) // its connection now reaches another process
			continue
		}
		w.follow(info.GetModels(), info.GetReload())
		p.mu.Lock()
		if info.GetReload() >= p.reloads[w.InstanceID] {
			delete(p.changed, w)
		}
		p.mu.Unlock()
	}
}

// addresses are the servers behind the target: dns:///name:port names resolved anew each
// search, anything else as it is.
func (p *pool) addresses(ctx context.Context) ([]string, error) {
	name, ok := strings.CutPrefix(p.target, "dns:///")
	if !ok {
		return []string{p.target}, nil
	}
	host, port, err := net.SplitHostPort(name)
	if err != nil {
		return nil, fmt.Errorf("tms: target %q: %w", p.target, err)
	}
	ips, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("tms: resolve %q: %w", host, err)
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip, port))
	}
	return out, nil
}

// search opens connections to every address until it holds one per worker process of its
// server, at most 4 x workers + 4 attempts per address (8 x workers + 8 at the start: see
// attempts), or until a connection is not answered once a worker of the address is held
// (see searchAddress). The start first gives up an address that refuses connections (nothing
// listens there: see refuses) at once, unless the options say waitForServer. It returns the
// error of a server that refused the credentials (waiting would not help) or, when no worker
// is known after it, a refusedError when every address refused, else the last error. It waits
// for a search under way (the background's may wait 5 s for a stalled connection) no longer
// than ctx allows, and then returns ctx's error.
func (p *pool) search(ctx context.Context, start bool) error {
	select {
	case p.searching <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.searching }()
	addrs, err := p.addresses(ctx)
	if err != nil {
		return err
	}
	var last error
	var refused refusedError
	whole := true
	for _, addr := range addrs {
		if start && !p.opts.waitForServer && refuses(ctx, addr, min(p.opts.connectTimeout, probeWait)) {
			refused, whole = append(refused, addr), false
			continue
		}
		err := p.searchAddress(ctx, addr, start)
		p.mu.Lock()
		whole = whole && p.counts[addr] > 0 && p.heldLocked(addr) >= int(p.counts[addr])
		p.mu.Unlock()
		if err != nil {
			if code := status.Code(err); code == codes.Unauthenticated || code == codes.PermissionDenied {
				return err
			}
			last = err
		}
	}
	p.mu.Lock()
	p.whole = whole
	p.mu.Unlock()
	if len(p.snapshot("")) == 0 {
		if len(refused) > 0 && len(refused) == len(addrs) {
			return refused
		}
		if last == nil {
			last = errors.New("no worker answered")
		}
		return last
	}
	return nil
}

// refusedError is the start's failure where every address refused the connection.
type refusedError []string

func (e refusedError) Error() string {
	return fmt.Sprintf("connection refused at %s: is tms-server running?", strings.Join(e, ", "))
}

func (e refusedError) GRPCStatus() *status.Status { return status.New(codes.Unavailable, e.Error()) }

// probeWait bounds how long the start waits to learn whether an address refuses connections.
const probeWait = 2 * time.Second

// refuses says whether a TCP connection to addr is refused: nothing listens there. False when
// one is accepted, when that cannot be told within wait (no answer at all, a name that does
// not resolve), and when gRPC reaches addr through a proxy (see proxied), where a direct
// connection tells nothing.
func refuses(ctx context.Context, addr string, wait time.Duration) bool {
	if proxied(addr) {
		return false
	}
	dialer := net.Dialer{Timeout: wait}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err == nil {
		_ = conn.Close()
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// proxied says whether gRPC connects to addr through an HTTP CONNECT proxy: grpc-go asks
// net/http's ProxyFromEnvironment, as for an https URL of addr (HTTPS_PROXY or https_proxy
// names the proxy, NO_PROXY or no_proxy the hosts reached without it; never localhost).
func proxied(addr string) bool {
	proxy, err := proxyFromEnvironment(&http.Request{URL: &url.URL{Scheme: "https", Host: addr}})
	return proxy != nil || err != nil
}

// proxyFromEnvironment is the proxy grpc-go uses; a variable: the tests replace it.
var proxyFromEnvironment = http.ProxyFromEnvironment

func (p *pool) held(addr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.heldLocked(addr)
}

func (p *pool) heldLocked(addr string) int {
	n := 0
	for _, w := range p.workers {
		if w.Address == addr {
			n++
		}
	}
	return n
}

// attempts is how many connections a search opens at an address whose server runs count
// workers. The kernel hands each new connection to a worker at random: the start opens up
// to eight per worker and eight more (a worker missed in about one start in 100,000 at 3
// workers), a background search half that (it runs again soon while workers are missing,
// and a worker that is not listening, a restarting one, costs it every connection).
func attempts(count int32, start bool) int {
	per := 4
	if start {
		per = 8
	}
	return per * (int(max(count, 1)) + 1)
}

// answerWait is how long the start waits for a connection's GetWorkerInfo while half its
// connect timeout would be left after it (the last connection waits for the rest): a stalled
// worker (stopped, wedged: the kernel still completes the handshake, nothing answers) costs
// the start a second, and a slow but live server (far away, overloaded) is still answered. A
// variable: the tests shorten it.
var answerWait = time.Second

// searchAddress opens connections to addr until it holds every worker of its server or the
// attempts run out. The start waits answerWait for a connection's answer while half the
// connect timeout would be left after it, the last connection all that is left of ctx (the
// connect timeout), and waits for the connection to be ready while no worker of addr is held
// (a server refusing it, one still starting, is tried again meanwhile); a background search
// waits up to 5 s, and not for a connection that fails. A connection not answered (a
// stalled or dead worker, nothing listening) ends the search at addr once a worker of addr
// is held: the background search finds the rest soon. Until then the start opens another,
// and a background search does only where a server answered before.
func (p *pool) searchAddress(ctx context.Context, addr string, start bool) error {
	var last error
	for attempt := 0; ; attempt++ {
		p.mu.Lock()
		count, closed := p.counts[addr], p.closed
		p.mu.Unlock()
		if closed || ctx.Err() != nil {
			if last != nil {
				return last // what the last connection met: the deadline, a refusal, ...
			}
			return ctx.Err()
		}
		if count > 0 && p.held(addr) >= int(count) {
			return nil
		}
		if attempt >= attempts(count, start) {
			return last
		}
		wait := min(p.opts.connectTimeout, 5*time.Second)
		if deadline, ok := ctx.Deadline(); start && ok {
			wait = time.Until(deadline)
			if wait-answerWait >= p.opts.connectTimeout/2 {
				wait = answerWait
			}
		}
		err := p.open(ctx, addr, wait, start && p.held(addr) == 0)
		if err == nil {
			continue
		}
		last = err
		switch status.Code(err) {
		case codes.AlreadyExists:
			continue // answered by a worker already held
		case codes.Unauthenticated, codes.PermissionDenied:
			return err // the server refuses us: do not insist
		}
		if p.held(addr) > 0 || (!start && count == 0) {
			return err // the rest is left to the background search, or nothing answers there
		}
	}
}

var errKnown = status.Error(codes.AlreadyExists, "a worker already held")

// open makes one new connection to addr and asks who answered, waiting at most wait (with
// ready, for the server to be ready too: a connection refused, or failing its handshake, is
// tried again meanwhile); a new worker is kept.
func (p *pool) open(ctx context.Context, addr string, wait time.Duration, ready bool) error {
	conn, err := grpc.NewClient("passthrough:///"+addr, p.dial...)
	if err != nil {
		return err
	}
	stub := tmsv1.NewModelServiceClient(conn)
	callCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	info, err := stub.GetWorkerInfo(callCtx, &tmsv1.GetWorkerInfoRequest{}, grpc.WaitForReady(ready))
	if err != nil {
		_ = conn.Close()
		return err
	}
	key := workerKey{info.GetInstanceId(), info.GetPid()}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts[addr] = max(info.GetWorkerCount(), 1)
	if _, ok := p.workers[key]; ok || p.closed {
		_ = conn.Close()
		return errKnown
	}
	p.workers[key] = &Worker{
		Address: addr, InstanceID: info.GetInstanceId(), PID: info.GetPid(),
		Index: info.GetWorkerIndex(), WorkerCount: info.GetWorkerCount(), Device: info.GetDevice(),
		models: info.GetModels(), reload: info.GetReload(), conn: conn, stub: stub,
	}
	return nil
}

// soon is how often the search runs while workers are missing: a worker starting or
// restarting is usually listening within a second.
const soon = 250 * time.Millisecond

// heal looks for missing workers, and asks those of a server that has reloaded which models
// they serve, every refresh interval (every soon while some are missing or yet to say) and
// when woken, until closed.
func (p *pool) heal() {
	defer close(p.done)
	timer := time.NewTimer(p.interval())
	defer timer.Stop()
	for {
		select {
		case <-p.life.Done():
			return
		case <-p.wake:
		case <-timer.C:
		}
		p.follow(p.life)
		ctx, cancel := context.WithTimeout(p.life, p.opts.connectTimeout)
		_ = p.search(ctx, false) // calls report their own errors; the next round tries again
		cancel()
		timer.Reset(p.interval())
	}
}

// interval is the wait before the next search.
func (p *pool) interval() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.whole && len(p.changed) == 0 {
		return p.opts.refresh
	}
	return min(p.opts.refresh, soon)
}

// isClosed says whether close was called.
func (p *pool) isClosed() bool { return p.life.Err() != nil }

// bind is ctx, also cancelled (with cause errClosed) when the pool closes: a call in flight
// or waiting for a worker ends at once.
func (p *pool) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(p.life, func() { cancel(errClosed) })
	return ctx, func() { stop(); cancel(nil) }
}

func (p *pool) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	workers := p.workers
	p.workers = map[workerKey]*Worker{}
	p.mu.Unlock()
	p.end()
	<-p.done
	var errs []error
	for _, w := range workers {
		errs = append(errs, w.conn.Close())
	}
	return errors.Join(errs...)
}
