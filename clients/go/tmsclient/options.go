package tmsclient

import (
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
)

// Option configures a Client; pass them to Dial.
type Option func(*options)

type options struct {
	timeout        time.Duration
	connectTimeout time.Duration
	waitForServer  bool
	refresh        time.Duration
	balancer       Balancer
	tls            *tls.Config
	token          string
	retry          RetryPolicy
	maxMessage     int
}

func defaultOptions() options {
	return options{
		timeout:        60 * time.Second,
		connectTimeout: 10 * time.Second,
		refresh:        2 * time.Second,
		balancer:       LeastLoaded(),
		retry:          DefaultRetry(),
		maxMessage:     64 << 20,
	}
}

// WithTimeout is the deadline of a call whose context has none (60 s by default), retries
// included.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithConnectTimeout bounds Dial's first search for workers (10 s by default). A server that
// accepts the connection is waited for; an address that refuses it (nothing listens there)
// fails Dial at once, unless WithWaitForServer(true).
func WithConnectTimeout(d time.Duration) Option { return func(o *options) { o.connectTimeout = d } }

// WithWaitForServer(true) has Dial also wait, up to the connect timeout, at an address that
// refuses connections: a server still starting (tms-server listens only once its workers have
// loaded their models) or restarting. A refused connection is then tried again until the
// connect timeout. False by default: Dial fails at once where every address refuses.
func WithWaitForServer(wait bool) Option { return func(o *options) { o.waitForServer = wait } }

// WithRefreshInterval is how often the client looks for missing workers (2 s by default;
// every 250 ms at most while some are missing); it also looks at once after dropping one.
func WithRefreshInterval(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// WithBalancer picks the worker of each call: LeastLoaded() (the default) or RoundRobin().
func WithBalancer(b Balancer) Option { return func(o *options) { o.balancer = b } }

// WithTLS makes every connection TLS with cfg (set RootCAs for a private CA, Certificates
// for mutual TLS, ServerName to override the name checked).
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithToken sends "authorization: Bearer <token>" on every call, worker discovery included.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithRetry replaces the retry policy (DefaultRetry()); NoRetry() sends each call once.
func WithRetry(p RetryPolicy) Option { return func(o *options) { o.retry = p } }

// WithMaxMessageSize bounds the messages sent and received (64 MiB by default).
func WithMaxMessageSize(bytes int) Option { return func(o *options) { o.maxMessage = bytes } }

// RetryPolicy says which failed calls are sent again, to another worker, and how long to
// wait before each: Initial, then times Multiplier up to Max, each less a random part up to
// Jitter (0..1), never past the call's deadline. A call whose status carries a
// google.rpc.RetryInfo (QUEUE_FULL, DRAINING) is sent again whatever its code, after the delay
// the server names instead of the backoff; Attempts bounds it too.
type RetryPolicy struct {
	Attempts   int // sends of one call, the first included
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	Jitter     float64
	Codes      []codes.Code
}

// DefaultRetry: 5 attempts, 50 ms doubling up to 2 s, half jitter, on UNAVAILABLE and
// CANCELLED (the codes of a worker that died or went away mid-call).
func DefaultRetry() RetryPolicy {
	return RetryPolicy{
		Attempts: 5, Initial: 50 * time.Millisecond, Max: 2 * time.Second, Multiplier: 2,
		Jitter: 0.5, Codes: []codes.Code{codes.Unavailable, codes.Canceled},
	}
}

// NoRetry sends each call once.
func NoRetry() RetryPolicy { p := DefaultRetry(); p.Attempts = 1; return p }

func (p RetryPolicy) String() string {
	return fmt.Sprintf("RetryPolicy(attempts=%d, initial=%s, max=%s, multiplier=%g, jitter=%g, codes=%v)",
		p.Attempts, p.Initial, p.Max, p.Multiplier, p.Jitter, p.Codes)
}

func (p RetryPolicy) retries(code codes.Code) bool {
	for _, c := range p.Codes {
		if c == code {
			return true
		}
	}
	return false
}

// Backoff is the wait before attempt number n+1 (n >= 1 attempts made); random is a number
// in [0, 1) (rand.Float64 outside tests).
func (p RetryPolicy) Backoff(n int, random float64) time.Duration {
	d := float64(p.Initial)
	for i := 1; i < n; i++ {
		d *= p.Multiplier
		if d >= float64(p.Max) {
			break
		}
	}
	d = min(d, float64(p.Max))
	return time.Duration(d * (1 - p.Jitter*random))
}

func (p RetryPolicy) backoff(n int) time.Duration { return p.Backoff(n, rand.Float64()) }
