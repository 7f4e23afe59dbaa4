package tmsclient

import (
	"cmp"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Balancer picks the worker for the next call; workers is never empty. Pass one to Dial
// with WithBalancer. Implementations must be safe for concurrent use.
type Balancer interface {
	Pick(workers []*Worker) *Worker
}

// RoundRobin gives each worker a call in turn.
func RoundRobin() Balancer { return &roundRobin{} }

type roundRobin struct{ next atomic.Uint64 }

func (b *roundRobin) Pick(workers []*Worker) *Worker {
	return workers[(b.next.Add(1)-1)%uint64(len(workers))]
}

func (b *roundRobin) String() string { return "RoundRobin()" }

// LeastLoaded picks the less loaded of two workers chosen at random ("power of two
// choices"); the default. A worker's load is the larger of this client's calls in flight on it
// and the calls in flight and queued it last reported (reports older than a second are
// ignored): the first is exact for this client, the second also sees other clients. The load
// is weighed by the worker's Latency, each scored (load + 1) x latency, so one slow or
// timed-out call steers the next ones away from it: a stopped worker, whose calls time out
// and whose reports stop, does not look idle. The latency fades over about ten seconds
// without calls, so a worker left aside for it (stopped and resumed, or once slow) is tried
// again in time instead of never. A worker with no latency yet counts as having the other's,
// so one stuck before its first answer does not draw every call. Sampling two workers instead
// of taking the least loaded keeps many clients from piling onto the same idle worker.
func LeastLoaded() Balancer { return leastLoaded{maxReportAge: time.Second} }

type leastLoaded struct{ maxReportAge time.Duration }

func (b leastLoaded) Pick(workers []*Worker) *Worker {
	if len(workers) == 1 {
		return workers[0]
	}
	first := rand.IntN(len(workers))
	second := rand.IntN(len(workers) - 1)
	if second >= first {
		second++
	}
	a, c := workers[first], workers[second]
	now := time.Now()
	latencyA, latencyC := a.latencyAsOf(now), c.latencyAsOf(now) // each faded once
	unknown := cmp.Or(max(latencyA, latencyC), time.Second)
	if b.score(c, now, cmp.Or(latencyC, unknown)) < b.score(a, now, cmp.Or(latencyA, unknown)) {
		return c
	}
	return a
}

// score is the expected cost of one more call on w: (load + 1) x latency.
func (b leastLoaded) score(w *Worker, now time.Time, latency time.Duration) float64 {
	return float64(b.load(w, now)+1) * latency.Seconds()
}

func (b leastLoaded) load(w *Worker, now time.Time) int {
	calls := w.InFlight()
	if report, at, ok := w.Load(); ok && now.Sub(at) <= b.maxReportAge {
		calls = max(calls, report.Total())
	}
	return calls
}

func (b leastLoaded) String() string { return "LeastLoaded()" }
