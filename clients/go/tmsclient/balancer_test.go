package tmsclient

import (
	"math"
	"testing"
	"time"
)

func workers(n int) []*Worker {
	out := make([]*Worker, n)
	for i := range out {
		out[i] = &Worker{PID: int64(100 + i), Index: int32(i)}
	}
	return out
}

func TestRoundRobinTakesEachInTurn(t *testing.T) {
	ws := workers(3)
	b := RoundRobin()
	var got []int64
	for range 6 {
		got = append(got, b.Pick(ws).PID)
	}
	want := []int64{100, 101, 102, 100, 101, 102}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestLeastLoadedAvoidsTheBusyWorker(t *testing.T) {
	ws := workers(2)
	ws[0].inFlight.Store(5)
	b := LeastLoaded()
	for range 50 {
		if w := b.Pick(ws); w != ws[1] {
			t.Fatalf("picked the busy worker %v", w)
		}
	}
}

func TestLeastLoadedReadsFreshReportsOnly(t *testing.T) {
	ws := workers(2)
	ws[1].setLoad(LoadReport{InFlight: 4, Queued: 4}) // other clients keep it busy
	b := LeastLoaded()
	for range 50 {
		if w := b.Pick(ws); w != ws[0] {
			t.Fatalf("picked the reported-busy worker %v", w)
		}
	}
	ws[1].mu.Lock()
	ws[1].loadedAt = time.Now().Add(-2 * time.Second) // stale: ignored
	ws[1].mu.Unlock()
	seen := map[*Worker]bool{}
	for range 200 {
		seen[b.Pick(ws)] = true
	}
	if len(seen) != 2 {
		t.Fatalf("a stale report still steers calls: %v", seen)
	}
}

func TestLeastLoadedWeighsTheLoadByLatency(t *testing.T) {
	ws := workers(2)
	now := time.Now()
	ws[0].recordLatency(300*time.Millisecond, now) // e.g. a call that timed out on it
	ws[1].recordLatency(10*time.Millisecond, now)
	b := LeastLoaded()
	for range 50 {
		if w := b.Pick(ws); w != ws[1] {
			t.Fatalf("picked the slow worker %v with equal calls", w)
		}
	}
	ws[1].inFlight.Store(5) // 6 x 10 ms still beats 1 x 300 ms
	if w := b.Pick(ws); w != ws[1] {
		t.Fatalf("picked the slow worker %v", w)
	}
	ws[1].inFlight.Store(30) // 31 x 10 ms does not
	if w := b.Pick(ws); w != ws[0] {
		t.Fatalf("picked the busy worker %v", w)
	}
}

func TestLeastLoadedCountsAnUnknownLatencyAsTheOther(t *testing.T) {
	ws := workers(2)
	ws[0].inFlight.Store(5) // stuck before its first answer: no latency, yet not free
	ws[1].inFlight.Store(1)
	ws[1].recordLatency(10*time.Millisecond, time.Now())
	b := LeastLoaded()
	for range 50 {
		if w := b.Pick(ws); w != ws[1] {
			t.Fatalf("picked the worker with no latency and more calls %v", w)
		}
	}
	fresh := workers(2) // neither has a latency: compared by calls alone
	fresh[1].inFlight.Store(2)
	for range 50 {
		if w := b.Pick(fresh); w != fresh[0] {
			t.Fatalf("picked the busier worker %v", w)
		}
	}
}

func TestLatencyJumpsUpAtOnceAndDecays(t *testing.T) {
	w := &Worker{}
	start := time.Now()
	w.recordLatency(300*time.Millisecond, start)
	if got := w.latencyAsOf(start); got != 300*time.Millisecond {
		t.Fatalf("latency %v after a 300 ms call", got)
	}
	at := start.Add(100 * time.Millisecond)
	w.recordLatency(time.Millisecond, at)
	if got := w.latencyAsOf(at); got <= 250*time.Millisecond || got >= 300*time.Millisecond {
		t.Fatalf("latency %v 100 ms after: a fast call pulls it down a little", got)
	}
	at = start.Add(5 * time.Second)
	w.recordLatency(time.Millisecond, at)
	if got := w.latencyAsOf(at); got >= 10*time.Millisecond {
		t.Fatalf("latency %v 5 s after: decayed to the fast calls", got)
	}
	w.recordLatency(200*time.Millisecond, at)
	if got := w.latencyAsOf(at); got != 200*time.Millisecond {
		t.Fatalf("latency %v after a 200 ms call", got)
	}
}

func TestLatencyFadesWithoutCalls(t *testing.T) {
	w := &Worker{}
	start := time.Now()
	if got := w.latencyAsOf(start.Add(time.Minute)); got != 0 {
		t.Fatalf("latency %v before any call", got)
	}
	w.recordLatency(500*time.Millisecond, start) // e.g. a call that timed out on it
	if got := w.latencyAsOf(start); got != 500*time.Millisecond {
		t.Fatalf("latency %v right after a 500 ms call", got)
	}
	// 500 ms x exp(-30 s / 10 s) = 24.9 ms
	if got := w.latencyAsOf(start.Add(30 * time.Second)); got >= 30*time.Millisecond {
		t.Fatalf("latency %v 30 s after a 500 ms call and none since: it should fade", got)
	}
	if got := w.Latency(); got <= 400*time.Millisecond || got > 500*time.Millisecond {
		t.Fatalf("Latency() %v just after a 500 ms call", got)
	}
}

func TestALatencyRecordedAfterAGapStartsFromTheFadedValue(t *testing.T) {
	w := &Worker{}
	start := time.Now()
	w.recordLatency(500*time.Millisecond, start)
	// 20 s on it has faded to 500 x exp(-2) = 67.7 ms: a 300 ms call is slower and counts at
	// once, and fades from then on.
	at := start.Add(20 * time.Second)
	w.recordLatency(300*time.Millisecond, at)
	if got := w.latencyAsOf(at); got != 300*time.Millisecond {
		t.Fatalf("latency %v after a 300 ms call", got)
	}
	want := time.Duration(float64(300*time.Millisecond) * math.Exp(-1))
	if got := w.latencyAsOf(at.Add(10 * time.Second)); (got - want).Abs() > time.Millisecond {
		t.Fatalf("latency %v 10 s after a 300 ms call, want %v", got, want)
	}
	// A faster call 2 s after a 500 ms one pulls down from the faded 500 x exp(-0.2), not 500.
	w = &Worker{}
	w.recordLatency(500*time.Millisecond, start)
	at = start.Add(2 * time.Second)
	w.recordLatency(100*time.Millisecond, at)
	faded := 500 * math.Exp(-0.2)
	wantMs := faded + (100-faded)*(1-math.Exp(-2)) // 141.9 ms (154.1 from an unfaded 500)
	if got := w.latencyAsOf(at); math.Abs(got.Seconds()*1000-wantMs) > 1 {
		t.Fatalf("latency %v after a 100 ms call 2 s after a 500 ms one, want %.1f ms", got, wantMs)
	}
}

func TestLeastLoadedTriesAgainAWorkerWhoseCallTimedOutLongAgo(t *testing.T) {
	ws := workers(2)
	now := time.Now()
	// A call timed out at 500 ms on ws[0] 40 s ago (stopped, since resumed) and none has
	// been sent there since: its latency has faded to 500 x exp(-4) = 9.2 ms, under the
	// 10 ms of ws[1], which just answered. With equal calls, ws[0] is tried again.
	ws[0].recordLatency(500*time.Millisecond, now.Add(-40*time.Second))
	ws[1].recordLatency(10*time.Millisecond, now)
	b := LeastLoaded()
	for range 50 {
		if w := b.Pick(ws); w != ws[0] {
			t.Fatalf("picked %v: the worker whose call timed out 40 s ago is starved", w)
		}
	}
}

func TestLeastLoadedReachesEveryWorker(t *testing.T) {
	ws := workers(4)
	b := LeastLoaded()
	seen := map[*Worker]bool{}
	for range 400 {
		seen[b.Pick(ws)] = true
	}
	if len(seen) != 4 || b.Pick(ws[:1]) != ws[0] {
		t.Fatalf("reached %d of 4 workers", len(seen))
	}
}

func TestServes(t *testing.T) {
	all := &Worker{}
	some := &Worker{models: []string{"face"}}
	if !all.serves("edges") || !some.serves("face") || some.serves("edges") || !some.serves("") {
		t.Fatal("serves is wrong")
	}
}
