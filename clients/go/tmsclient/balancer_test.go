package tmsclient

import (
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
	if got := w.Latency(); got != 300*time.Millisecond {
		t.Fatalf("latency %v after a 300 ms call", got)
	}
	w.recordLatency(time.Millisecond, start.Add(100*time.Millisecond))
	if got := w.Latency(); got <= 250*time.Millisecond || got >= 300*time.Millisecond {
		t.Fatalf("latency %v 100 ms after: a fast call pulls it down a little", got)
	}
	w.recordLatency(time.Millisecond, start.Add(5*time.Second))
	if got := w.Latency(); got >= 10*time.Millisecond {
		t.Fatalf("latency %v 5 s after: decayed to the fast calls", got)
	}
	w.recordLatency(200*time.Millisecond, start.Add(5*time.Second))
	if got := w.Latency(); got != 200*time.Millisecond {
		t.Fatalf("latency %v after a 200 ms call", got)
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
