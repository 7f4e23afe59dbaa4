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
	some := &Worker{Models: []string{"face"}}
	if !all.serves("edges") || !some.serves("face") || some.serves("edges") || !some.serves("") {
		t.Fatal("serves is wrong")
	}
}
