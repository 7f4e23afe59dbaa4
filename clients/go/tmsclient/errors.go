package tmsclient

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The reasons a TMS server names in the google.rpc.ErrorInfo of a failed call (Error.Reason);
// the comment above service ModelService in proto/tms/v1/model_service.proto explains each.
const (
	ReasonModelNotFound    = "MODEL_NOT_FOUND"    // NotFound
	ReasonModelNotLoaded   = "MODEL_NOT_LOADED"   // FailedPrecondition
	ReasonInvalidRequest   = "INVALID_REQUEST"    // InvalidArgument
	ReasonInvalidImage     = "INVALID_IMAGE"      // InvalidArgument
	ReasonInvalidArgs      = "INVALID_ARGS"       // InvalidArgument
	ReasonInvalidInput     = "INVALID_INPUT"      // InvalidArgument
	ReasonImageTooLarge    = "IMAGE_TOO_LARGE"    // InvalidArgument
	ReasonBatchTooLarge    = "BATCH_TOO_LARGE"    // InvalidArgument
	ReasonQueueFull        = "QUEUE_FULL"         // ResourceExhausted, RetryInfo 0.1 s
	ReasonDraining         = "DRAINING"           // Unavailable, RetryInfo 0 s
	ReasonReloadInProgress = "RELOAD_IN_PROGRESS" // Unavailable (AdminService)
	ReasonModelFailed      = "MODEL_FAILED"       // Internal
	ReasonUnsupportedCall  = "UNSUPPORTED_CALL"   // Unimplemented
	ReasonUnauthenticated  = "UNAUTHENTICATED"    // Unauthenticated
	ReasonPermissionDenied = "PERMISSION_DENIED"  // PermissionDenied (AdminService)
	ReasonInternal         = "INTERNAL"           // Internal
)

// Error is what every call of a Client returns when the server (or the connection) fails it:
// the gRPC status of the last attempt, with its google.rpc details decoded. errors.As(err,
// &tmsErr) reaches it; status.Code(err) works too, since Error carries its status (GRPCStatus).
type Error struct {
	// Method is the RPC, e.g. "RunImage".
	Method string
	// Code is the gRPC status code: codes.NotFound for an unknown model, codes.InvalidArgument
	// for a malformed image, codes.Unauthenticated for a missing or wrong token, and so on.
	Code codes.Code
	// Message is the server's message, for people; programs switch on Code and Reason.
	Message string
	// Reason is the reason of the status's google.rpc.ErrorInfo (one of the Reason constants,
	// e.g. ReasonQueueFull); "" when the status has none, as when gRPC itself or the
	// connection failed the call.
	Reason string
	// Domain is the ErrorInfo's domain: "tms" for the server's errors, "" without ErrorInfo.
	Domain string
	// Metadata is the ErrorInfo's metadata, e.g. {"model": "face"}; nil without ErrorInfo.
	Metadata map[string]string
	// FieldViolations are the request fields at fault (google.rpc.BadRequest), in the order
	// the server sent them, e.g. "args_json" or "images[2].dtype"; nil when there are none.
	FieldViolations []FieldViolation
	// RetryDelay is how long the server asks to wait before the same call (google.rpc.RetryInfo)
	// when HasRetryDelay is true: 100 ms for QUEUE_FULL, 0 for DRAINING ("at once, on another
	// worker"). HasRetryDelay false means the status carried no RetryInfo: waiting will not help.
	RetryDelay    time.Duration
	HasRetryDelay bool
	// Details are all the status details the server attached (google.rpc messages, e.g.
	// *errdetails.ErrorInfo), the ones decoded above included.
	Details []any
	// Attempts is how many times the call was sent.
	Attempts int

	status *status.Status
}

// FieldViolation is one google.rpc.BadRequest field violation: the request field at fault
// and what is wrong with it.
type FieldViolation struct {
	Field       string
	Description string
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("tms: %s: %s (%s): %s", e.Method, e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("tms: %s: %s: %s", e.Method, e.Code, e.Message)
}

// GRPCStatus makes status.Code and status.FromError see the call's status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is makes errors.Is(err, &tmsclient.Error{Code: codes.NotFound}) match on the code, and
// errors.Is(err, &tmsclient.Error{Reason: tmsclient.ReasonQueueFull}) on the reason (a
// target with both must match both).
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) || t.Method != "" || t.Message != "" {
		return false
	}
	if t.Reason != "" {
		return t.Reason == e.Reason && (t.Code == codes.OK || t.Code == e.Code)
	}
	return t.Code == e.Code
}

// errorOf turns what an attempt failed with into an *Error.
func errorOf(method string, err error, attempts int) *Error {
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	return statusError(method, status.Convert(err), attempts)
}

// statusError is the *Error of a status: its code and message, and its details decoded.
func statusError(method string, st *status.Status, attempts int) *Error {
	e := &Error{
		Method: method, Code: st.Code(), Message: st.Message(), Details: st.Details(),
		Attempts: attempts, status: st,
	}
	for _, d := range e.Details {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if e.Reason == "" && e.Domain == "" {
				e.Reason, e.Domain, e.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			e.RetryDelay, e.HasRetryDelay = max(d.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return e
}

// retryDelay is the wait the google.rpc.RetryInfo of err's status asks for, if it has one.
func retryDelay(err error) (time.Duration, bool) {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return max(ri.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return 0, false
}
