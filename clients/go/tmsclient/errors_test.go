package tmsclient

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// detailed is a status error as the server makes it: an ErrorInfo of domain "tms", then the
// extra details (BadRequest, RetryInfo).
func detailed(code codes.Code, reason string, extra ...protoadapt.MessageV1) error {
	details := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{
		Domain: "tms", Reason: reason, Metadata: map[string]string{"model": "m"},
	}}, extra...)
	st, err := status.New(code, "scripted "+reason).WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func retryInfo(d time.Duration) *errdetails.RetryInfo {
	return &errdetails.RetryInfo{RetryDelay: durationpb.New(d)}
}

func TestErrorDecodesTheStatusDetails(t *testing.T) {
	err := detailed(codes.InvalidArgument, ReasonInvalidArgs, &errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "args_json.label", Description: "too long"},
			{Field: "args_json.scale", Description: "below 0"},
		},
	})
	e := errorOf("RunImage", err, 1)
	if e.Code != codes.InvalidArgument || e.Reason != ReasonInvalidArgs || e.Domain != "tms" ||
		e.Metadata["model"] != "m" || e.HasRetryDelay || len(e.Details) != 2 {
		t.Fatalf("%+v", e)
	}
	want := []FieldViolation{{"args_json.label", "too long"}, {"args_json.scale", "below 0"}}
	if len(e.FieldViolations) != 2 || e.FieldViolations[0] != want[0] || e.FieldViolations[1] != want[1] {
		t.Fatalf("field violations %+v", e.FieldViolations)
	}
	if e.Error() != "tms: RunImage: InvalidArgument (INVALID_ARGS): scripted INVALID_ARGS" {
		t.Fatal(e.Error())
	}

	e = errorOf("RunText", detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(100*time.Millisecond)), 1)
	if !e.HasRetryDelay || e.RetryDelay != 100*time.Millisecond || e.FieldViolations != nil {
		t.Fatalf("QUEUE_FULL %+v", e)
	}
	e = errorOf("RunText", detailed(codes.Unavailable, ReasonDraining, retryInfo(0)), 1)
	if !e.HasRetryDelay || e.RetryDelay != 0 {
		t.Fatalf("DRAINING %+v", e)
	}
}

func TestErrorWithoutDetails(t *testing.T) {
	e := errorOf("RunImage", status.Error(codes.ResourceExhausted, "message larger than max"), 1)
	if e.Reason != "" || e.Domain != "" || e.Metadata != nil || e.FieldViolations != nil ||
		e.HasRetryDelay || e.RetryDelay != 0 || len(e.Details) != 0 {
		t.Fatalf("%+v", e)
	}
	if _, ok := retryDelay(e); ok {
		t.Fatal("a status without RetryInfo has a retry delay")
	}
}

func TestErrorsIsMatchesTheCodeAndTheReason(t *testing.T) {
	err := error(errorOf("RunText", detailed(codes.ResourceExhausted, ReasonQueueFull, retryInfo(0)), 1))
	for target, want := range map[*Error]bool{
		{Code: codes.ResourceExhausted}:                           true,
		{Reason: ReasonQueueFull}:                                 true,
		{Code: codes.ResourceExhausted, Reason: ReasonQueueFull}:  true,
		{Code: codes.Unavailable, Reason: ReasonQueueFull}:        false,
		{Reason: ReasonDraining}:                                  false,
		{Code: codes.NotFound}:                                    false,
		{Code: codes.ResourceExhausted, Message: "other message"}: false,
	} {
		if errors.Is(err, target) != want {
			t.Errorf("errors.Is(%v, %+v) != %v", err, target, want)
		}
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatal("status.Code does not see the code")
	}
}
