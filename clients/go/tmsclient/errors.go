package tmsclient

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is what every call of a Client returns when the server (or the connection) fails it:
// the gRPC status of the last attempt. errors.As(err, &tmsErr) reaches it; status.Code(err)
// works too, since Error carries its status (GRPCStatus).
type Error struct {
	// Method is the RPC, e.g. "RunImage".
	Method string
	// Code is the gRPC status code: codes.NotFound for an unknown model, codes.InvalidArgument
	// for a malformed image, codes.Unauthenticated for a missing or wrong token, and so on.
	Code codes.Code
	// Message is the server's message.
	Message string
	// Details are the status details the server attached (google.rpc messages).
	Details []any
	// Attempts is how many times the call was sent.
	Attempts int

	status *status.Status
}

func (e *Error) Error() string {
	return fmt.Sprintf("tms: %s: %s: %s", e.Method, e.Code, e.Message)
}

// GRPCStatus makes status.Code and status.FromError see the call's status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is makes errors.Is(err, &tmsclient.Error{Code: codes.NotFound}) match on the code.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code && t.Method == "" && t.Message == ""
}

// errorOf turns what an attempt failed with into an *Error.
func errorOf(method string, err error, attempts int) *Error {
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	st := status.Convert(err)
	return &Error{
		Method: method, Code: st.Code(), Message: st.Message(), Details: st.Details(),
		Attempts: attempts, status: st,
	}
}
