package tmsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

type frameStream = grpc.BidiStreamingServer[tmsv1.RunImageStreamRequest, tmsv1.RunImageStreamResponse]

// streamWorker is a fakeWorker whose RunImageStream is serve.
type streamWorker struct {
	fakeWorker
	serve func(frameStream) error
}

func (f *streamWorker) RunImageStream(s frameStream) error { return f.serve(s) }

// grayFrames are n 1x1 frames, frame i of value i.
func grayFrames(n int) iter.Seq[Image] {
	return func(yield func(Image) bool) {
		for i := range n {
			img := Image{Data: []byte{byte(i)}, Shape: []int64{1, 1}, DType: tmsv1.DType_D_TYPE_UINT8,
				Color: tmsv1.ColorOrder_COLOR_ORDER_GRAY, Encoding: tmsv1.Encoding_ENCODING_RAW}
			if !yield(img) {
				return
			}
		}
	}
}

// answer is the response to req: {"pixel": its value}, or the error failing(req) gives.
func answer(req *tmsv1.RunImageStreamRequest, failing func(*tmsv1.RunImageStreamRequest) error) *tmsv1.RunImageStreamResponse {
	resp := &tmsv1.RunImageStreamResponse{FrameId: req.GetFrameId()}
	if err := failing(req); err != nil {
		resp.ErrorStatus, _ = proto.Marshal(status.Convert(err).Proto())
	} else {
		resp.ResultJson = fmt.Sprintf(`{"pixel": %d}`, req.GetImage().GetData()[0])
	}
	return resp
}

// requests are the requests a fake read.
type requests struct {
	mu   sync.Mutex
	list []*tmsv1.RunImageStreamRequest
}

func (r *requests) add(req *tmsv1.RunImageStreamRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, req)
}

func (r *requests) all() []*tmsv1.RunImageStreamRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.list
}

// echo answers each frame in turn, failing those failing names; it records the requests.
func echo(reqs *requests, failing func(*tmsv1.RunImageStreamRequest) error) func(frameStream) error {
	return func(s frameStream) error {
		s.SetTrailer(metadata.Pairs(loadKey, string(EncodeORCA(map[string]float64{"in_flight": 2}))))
		for {
			req, err := s.Recv()
			if err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			reqs.add(req)
			if err := s.Send(answer(req, failing)); err != nil {
				return err
			}
		}
	}
}

func none(*tmsv1.RunImageStreamRequest) error { return nil }

func TestAStreamAnswersEachFrameInOrder(t *testing.T) {
	var reqs requests
	c := serveFake(t, &streamWorker{serve: echo(&reqs, none)})
	var got []string
	for r, err := range c.RunImageStream(context.Background(), "m", grayFrames(6), map[string]any{"label": "v"}) {
		if err != nil || r.Err != nil || r.FrameID != len(got) {
			t.Fatalf("frame %d: %v %v %v", len(got), r.FrameID, r.Err, err)
		}
		got = append(got, string(r.Result))
	}
	if len(got) != 6 || got[5] != `{"pixel": 5}` {
		t.Fatalf("results %v", got)
	}
	for i, req := range reqs.all() {
		named := req.GetModel() == "m" && req.GetArgsJson() == `{"label":"v"}`
		if req.GetFrameId() != uint64(i) || named != (i == 0) || (i > 0 && (req.GetModel() != "" || req.GetArgsJson() != "")) {
			t.Fatalf("request %d: %v", i, req)
		}
	}
	w := c.Workers()[0]
	if report, _, ok := w.Load(); !ok || report.Total() != 2 || w.InFlight() != 0 {
		t.Fatalf("load %v %v, in flight %d", report, ok, w.InFlight())
	}
}

func TestAFailedFrameIsReportedAloneAndTheStreamGoesOn(t *testing.T) {
	var reqs requests
	tooLarge := detailed(codes.InvalidArgument, ReasonImageTooLarge, &errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "image", Description: "too many pixels"}},
	})
	failing := func(req *tmsv1.RunImageStreamRequest) error {
		if req.GetFrameId() == 1 {
			return tooLarge
		}
		return nil
	}
	c := serveFake(t, &streamWorker{serve: echo(&reqs, failing)})
	var results []FrameResult
	for r, err := range c.RunImageStream(context.Background(), "m", grayFrames(3), nil) {
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	var e *Error
	if len(results) != 3 || results[0].Err != nil || results[2].Err != nil || string(results[2].Result) != `{"pixel": 2}` {
		t.Fatalf("results %+v", results)
	}
	if !errors.As(results[1].Err, &e) || e.Code != codes.InvalidArgument || e.Reason != ReasonImageTooLarge ||
		e.Metadata["model"] != "m" || len(e.FieldViolations) != 1 || e.FieldViolations[0].Field != "image" ||
		e.Method != "RunImageStream" || results[1].Result != nil {
		t.Fatalf("frame 1: %#v", results[1])
	}
}

func TestTheWindowBoundsTheFramesInFlight(t *testing.T) {
	const window = 3
	var ahead, most atomic.Int32 // requests read and not yet answered
	serve := func(s frameStream) error {
		reqs := make(chan *tmsv1.RunImageStreamRequest, 100)
		go func() {
			defer close(reqs)
			for {
				req, err := s.Recv()
				if err != nil {
					return
				}
				if n := ahead.Add(1); n > most.Load() {
					most.Store(n)
				}
				reqs <- req
			}
		}()
		for req := range reqs {
			time.Sleep(20 * time.Millisecond) // hold the answer: a client without a window would run ahead
			ahead.Add(-1)
			if err := s.Send(answer(req, none)); err != nil {
				return err
			}
		}
		return nil
	}
	c := serveFake(t, &streamWorker{serve: serve})
	n := 0
	for _, err := range c.RunImageStream(context.Background(), "m", grayFrames(12), nil, WithWindow(window)) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 12 || most.Load() > window || most.Load() < 2 {
		t.Fatalf("%d answers, at most %d frames in flight (window %d)", n, most.Load(), window)
	}
	for _, err := range c.RunImageStream(context.Background(), "m", grayFrames(1), nil, WithWindow(0)) {
		if err == nil || !strings.Contains(err.Error(), "window") {
			t.Fatalf("window 0: %v", err)
		}
	}
}

func TestAFrameAnsweredOutOfOrderFailsTheStream(t *testing.T) {
	serve := func(s frameStream) error {
		if _, err := s.Recv(); err != nil {
			return err
		}
		return s.Send(&tmsv1.RunImageStreamResponse{FrameId: 1, ResultJson: "{}"})
	}
	c := serveFake(t, &streamWorker{serve: serve})
	for r, err := range c.RunImageStream(context.Background(), "m", grayFrames(2), nil) {
		var e *Error
		if !errors.As(err, &e) || e.Code != codes.Internal || !strings.Contains(e.Message, "frame 1 where frame 0") {
			t.Fatalf("got %+v, %v", r, err)
		}
	}
}

func TestAStreamEndedWithAFrameUnansweredFailsInternal(t *testing.T) {
	serve := func(s frameStream) error { // reads two frames, answers one, ends well
		for range 2 {
			if _, err := s.Recv(); err != nil {
				return err
			}
		}
		return s.Send(&tmsv1.RunImageStreamResponse{FrameId: 0, ResultJson: "{}"})
	}
	c := serveFake(t, &streamWorker{serve: serve})
	var got []string
	for r, err := range c.RunImageStream(context.Background(), "m", grayFrames(2), nil) {
		var e *Error
		switch {
		case err == nil:
			got = append(got, fmt.Sprint(r.FrameID))
		case errors.As(err, &e) && e.Code == codes.Internal && strings.Contains(e.Message, "before frame 1"):
			got = append(got, "internal")
		default:
			t.Fatalf("got %v", err)
		}
	}
	if strings.Join(got, " ") != "0 internal" {
		t.Fatalf("got %v", got)
	}
}

func TestAStreamFailedAsAWholeEndsWithItsError(t *testing.T) {
	serve := func(frameStream) error { return detailed(codes.NotFound, ReasonModelNotFound) }
	c := serveFake(t, &streamWorker{serve: serve})
	var errs []error
	for r, err := range c.RunImageStream(context.Background(), "nope", grayFrames(3), nil) {
		if err == nil {
			t.Fatalf("a result %+v", r)
		}
		errs = append(errs, err)
	}
	var e *Error
	if len(errs) != 1 || !errors.As(errs[0], &e) || e.Code != codes.NotFound || e.Reason != ReasonModelNotFound {
		t.Fatalf("errors %v", errs)
	}
	if w := c.Workers(); len(w) != 1 || w[0].InFlight() != 0 {
		t.Fatalf("workers %v", w)
	}
}

func TestStoppingEarlyCancelsTheStream(t *testing.T) {
	var reqs requests
	cancelled := make(chan struct{})
	serve := func(s frameStream) error {
		defer func() {
			<-s.Context().Done()
			close(cancelled)
		}()
		return echo(&reqs, none)(s)
	}
	c := serveFake(t, &streamWorker{serve: serve})
	var framesEnded atomic.Bool
	endless := func(yield func(Image) bool) {
		defer framesEnded.Store(true)
		for img := range grayFrames(256) {
			if !yield(img) {
				return
			}
		}
	}
	n := 0
	for _, err := range c.RunImageStream(context.Background(), "m", endless, nil) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
	if !framesEnded.Load() {
		t.Fatal("the frames were still being read after the loop ended")
	}
	if w := c.Workers()[0]; w.InFlight() != 0 {
		t.Fatalf("%d calls in flight", w.InFlight())
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the server's stream was not cancelled")
	}
}

// stalledFrames yields frame 0, then blocks until release is closed (a camera between frames)
// before it yields frame 1; refused says that yield returned false, ended closes on return.
type stalledFrames struct {
	release, ended chan struct{}
	refused        atomic.Bool
}

func (s *stalledFrames) frames(yield func(Image) bool) {
	defer close(s.ended)
	for img := range grayFrames(2) {
		if img.Data[0] == 1 {
			<-s.release
		}
		if !yield(img) {
			s.refused.Store(true)
			return
		}
	}
}

func TestAStreamErrorDoesNotWaitForBlockedFrames(t *testing.T) {
	notFound := func(reqs *requests) func(frameStream) error {
		return func(s frameStream) error {
			req, err := s.Recv()
			if err != nil {
				return err
			}
			reqs.add(req)
			return detailed(codes.NotFound, ReasonModelNotFound)
		}
	}
	for _, tc := range []struct {
		name    string
		serve   func(*requests) func(frameStream) error
		timeout time.Duration // of ctx; 0: none, Close after 300 ms
		want    codes.Code
	}{
		{"ctx deadline", func(r *requests) func(frameStream) error { return echo(r, none) }, 300 * time.Millisecond, codes.DeadlineExceeded},
		{"Close", func(r *requests) func(frameStream) error { return echo(r, none) }, 0, codes.FailedPrecondition},
		{"unknown model, then Close", notFound, 0, codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reqs requests
			c := serveFake(t, &streamWorker{serve: tc.serve(&reqs)})
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			} else {
				time.AfterFunc(300*time.Millisecond, func() { _ = c.Close() })
			}
			s := &stalledFrames{release: make(chan struct{}), ended: make(chan struct{})}
			late := time.AfterFunc(3*time.Second, func() { close(s.release) }) // the camera resumes
			start := time.Now()
			var got []string
			for r, err := range c.RunImageStream(ctx, "m", s.frames, nil) {
				got = append(got, fmt.Sprintf("%d %v", r.FrameID, status.Code(err)))
			}
			took := time.Since(start)
			if late.Stop() {
				close(s.release)
			}
			want := []string{fmt.Sprintf("0 %v", tc.want)}
			if tc.want != codes.NotFound {
				want = append([]string{"0 OK"}, want...)
			}
			if strings.Join(got, ", ") != strings.Join(want, ", ") || took > time.Second {
				t.Fatalf("got %v after %s, not %v at once", got, took, want)
			}
			select {
			case <-s.ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the frames did not end once they could")
			}
			if !s.refused.Load() || len(reqs.all()) != 1 {
				t.Fatalf("frame 1 was taken (refused %v), %d frames sent", s.refused.Load(), len(reqs.all()))
			}
		})
	}
}

func TestAPanicInTheFramesGoesOnInTheLoopOnceTheFramesSentAreAnswered(t *testing.T) {
	var reqs requests
	c := serveFake(t, &streamWorker{serve: echo(&reqs, none)})
	frames := func(yield func(Image) bool) {
		for img := range grayFrames(2) {
			if !yield(img) {
				return
			}
		}
		panic("camera unplugged")
	}
	var got []string
	func() {
		defer func() {
			if p := recover(); p != "camera unplugged" {
				t.Errorf("recovered %v", p)
			}
		}()
		for r, err := range c.RunImageStream(context.Background(), "m", frames, nil) {
			got = append(got, fmt.Sprintf("%d %s %v", r.FrameID, r.Result, err))
		}
		t.Error("the loop ended without the panic")
	}()
	if strings.Join(got, ", ") != `0 {"pixel": 0} <nil>, 1 {"pixel": 1} <nil>` {
		t.Fatalf("got %v", got)
	}
	if w := c.Workers()[0]; w.InFlight() != 0 {
		t.Fatalf("%d calls in flight", w.InFlight())
	}
}
