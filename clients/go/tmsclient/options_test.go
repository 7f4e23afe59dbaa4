package tmsclient

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBackoffGrowsToItsMaximumWithJitter(t *testing.T) {
	p := DefaultRetry()
	for n, want := range map[int]time.Duration{1: 50, 2: 100, 3: 200, 10: 2000} {
		if got := p.Backoff(n, 0); got != want*time.Millisecond {
			t.Errorf("Backoff(%d) = %s, want %s ms", n, got, want)
		}
	}
	if got := p.Backoff(1, 0.999); got < 25*time.Millisecond || got > 26*time.Millisecond {
		t.Errorf("half jitter: %s", got)
	}
	if !p.retries(codes.Unavailable) || !p.retries(codes.Canceled) || p.retries(codes.NotFound) {
		t.Error("the default codes are UNAVAILABLE and CANCELLED")
	}
	if NoRetry().Attempts != 1 {
		t.Error("NoRetry sends once")
	}
}

func TestOptions(t *testing.T) {
	o := defaultOptions()
	for _, opt := range []Option{WithTimeout(time.Second), WithConnectTimeout(2 * time.Second),
		WithToken("t"), WithBalancer(RoundRobin()), WithRetry(NoRetry()), WithRefreshInterval(time.Minute)} {
		opt(&o)
	}
	if o.timeout != time.Second || o.connectTimeout != 2*time.Second || o.token != "t" ||
		o.retry.Attempts != 1 || o.refresh != time.Minute {
		t.Fatalf("got %+v", o)
	}
}

func TestErrorCarriesItsStatus(t *testing.T) {
	err := error(errorOf("RunImage", status.Error(codes.NotFound, "no model named 'x'"), 1))
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.NotFound || e.Method != "RunImage" {
		t.Fatalf("got %#v", err)
	}
	if status.Code(err) != codes.NotFound || !errors.Is(err, &Error{Code: codes.NotFound}) {
		t.Fatal("status.Code and errors.Is do not see the code")
	}
	if err.Error() != "tms: RunImage: NotFound: no model named 'x'" {
		t.Fatalf("message %q", err)
	}
}
