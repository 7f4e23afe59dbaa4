// Package tmsclient is the Go client of TMS (Tiny Model Server).
//
// A TMS server runs several worker processes on one port (SO_REUSEPORT), and the kernel hands
// each new connection to one of them. Dial opens connections and asks each who answered
// (GetWorkerInfo) until it holds one per worker process; each call goes to the worker the
// Balancer picks among those serving its model, and a call that fails with UNAVAILABLE or
// CANCELLED is sent again to another worker, after a backoff, within the call's deadline, as
// is one whose status carries a google.rpc.RetryInfo (QUEUE_FULL, DRAINING), after the delay
// it names. A worker whose call fails UNAVAILABLE, or whose tms-worker trailer names another
// process, is dropped, and the client looks for missing workers in the background. When a
// worker's load report says it has done a reload of its server (which may change the models
// a worker serves), the client asks that server's workers again which models they serve, in
// the background, and calls follow.
//
//	c, err := tmsclient.Dial(ctx, "localhost:50051", tmsclient.WithToken(token))
//	if err != nil { ... }
//	defer c.Close()
//	img, _ := tmsclient.EncodedImage(jpegBytes)
//	result, err := c.RunImage(ctx, "face", img, nil) // JSON: {"faces": [...]}
//
// Errors are *Error values carrying the gRPC code (status.Code(err) works too):
// codes.NotFound for an unknown model, codes.InvalidArgument for a malformed image,
// codes.Unauthenticated for a wrong token, and so on; and the status details decoded: the
// ErrorInfo reason (ReasonModelNotFound, ...), the BadRequest field violations, the RetryInfo
// delay.
package tmsclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

// Client calls the tms.v1.ModelService of a server's workers. It is safe for concurrent use.
type Client struct {
	pool *pool
	opts options
}

// Dial finds the workers of the server at target ("host:port", or "dns:///name:port" for
// every address of a name) and returns a Client holding one connection per worker process.
// A worker that does not answer (a stalled one) costs it a second: Dial returns with the
// workers that answered, and the client finds the rest in the background. It fails when no
// worker answers within the connect timeout (codes.Unavailable, "no TMS worker answered at
// HOST:PORT ..."; ctx's code, DeadlineExceeded or Canceled, when ctx ends first), or at once
// when the server refuses the credentials (codes.Unauthenticated, codes.PermissionDenied), or
// when every address refuses the connection, nothing listening there (codes.Unavailable, "connection refused at
// HOST:PORT: is tms-server running?"), unless WithWaitForServer(true): then a refused
// connection is tried again until the connect timeout. A target of several addresses in one
// string ("h1:50051,h2:50051") fails at once (codes.InvalidArgument): give one, or a dns:///
// name that resolves to them all.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	if strings.Contains(target, ",") { // "h1:p1,h2:p2" would pass as a host "h1:p1,h2" and never resolve
		return nil, statusError("Dial", status.Newf(codes.InvalidArgument,
			"target %q is several addresses in one string; give one 'host:port', "+
				"or 'dns:///name:port' for every address a name resolves to", target), 0)
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.retry.Attempts < 1 {
		o.retry.Attempts = 1
	}
	p := newPool(target, o)
	go p.heal()
	searchCtx, cancel := context.WithTimeout(ctx, o.connectTimeout)
	defer cancel()
	if err := p.search(searchCtx, true); err != nil {
		_ = p.close()
		hint := "is it running, and does it serve TLS (then pass WithTLS)?"
		if o.tls != nil {
			hint = "is it running, and do the CA, server name and client certificate fit it?"
		}
		e := errorOf("Dial", err, 1)
		var refused refusedError
		if e.Code != codes.Unauthenticated && e.Code != codes.PermissionDenied && !errors.As(err, &refused) {
			code := codes.Unavailable // no worker could be reached; ctx's own code when it ended first
			if ctx.Err() != nil {
				code = status.FromContextError(ctx.Err()).Code()
			}
			e = statusError("Dial", status.New(code,
				fmt.Sprintf("no TMS worker answered at %s (%s): %s", target, hint, e.Message)), 1)
		}
		return nil, e
	}
	return &Client{pool: p, opts: o}, nil
}

// Close closes every connection and stops the background search. Calls and streams in flight
// end at once, and later calls and streams fail at once, without retry: both with
// codes.FailedPrecondition, "this client is closed; make a new one to call again".
func (c *Client) Close() error { return c.pool.close() }

// errClosed is the status of a call made on a closed client, or ended by Close.
var errClosed = status.Error(codes.FailedPrecondition, "this client is closed; make a new one to call again")

// closedIf is err, or errClosed when the client is closed: Close ended the call, by its
// context (bound to the pool) or by closing its connection, whichever came first.
func (c *Client) closedIf(method string, err error) error {
	if err == nil || !c.pool.isClosed() {
		return err
	}
	attempts := 0
	if e := (*Error)(nil); errors.As(err, &e) {
		attempts = e.Attempts
	}
	return errorOf(method, errClosed, attempts)
}

// Workers are the worker processes the client holds a connection to now.
func (c *Client) Workers() []*Worker { return c.pool.snapshot("") }

func (c *Client) String() string {
	return fmt.Sprintf("tmsclient.Client(target=%s workers=%v)", c.pool.target, c.Workers())
}

// invoke runs one call on the worker the balancer picks among those serving model, again on
// another worker when it fails with a code the retry policy names (after a backoff) or with a
// status carrying a google.rpc.RetryInfo (after the delay it names). Close ends it at once.
func (c *Client) invoke(ctx context.Context, method, model string,
	call func(ctx context.Context, w *Worker, opts ...grpc.CallOption) error) (err error) {
	if c.pool.isClosed() {
		return errorOf(method, errClosed, 0)
	}
	if _, ok := ctx.Deadline(); !ok && c.opts.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.timeout)
		defer cancel()
	}
	ctx, unbind := c.pool.bind(ctx)
	defer unbind()
	defer func() { err = c.closedIf(method, err) }()
	policy := c.opts.retry
	var last error
	tried := map[*Worker]bool{}
	for attempt := 1; ; attempt++ {
		w, err := c.pick(ctx, model, tried)
		if err != nil {
			if last == nil {
				last = err
			}
			return errorOf(method, last, attempt-1)
		}
		tried[w] = true
		var trailer metadata.MD
		w.inFlight.Add(1)
		sent, started := ctx.Err() == nil, time.Now() // gRPC fails an ended ctx unsent
		err = call(ctx, w, grpc.Trailer(&trailer))
		if sent { // answered or failed, timed out too: LeastLoaded weighs it
			now := time.Now()
			w.recordLatency(now.Sub(started), now)
		}
		w.inFlight.Add(-1)
		c.observe(w, trailer)
		if err == nil {
			return nil
		}
		last = err
		code := status.Code(err)
		if code == codes.Unavailable {
			c.pool.drop(w)
		}
		delay, asked := retryDelay(err)
		if ctx.Err() != nil || c.pool.isClosed() || !(asked || policy.retries(code)) || attempt >= policy.Attempts {
			return errorOf(method, err, attempt)
		}
		wait := policy.backoff(attempt)
		if asked {
			wait = delay // the server's RetryInfo: QUEUE_FULL 100 ms, DRAINING at once
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return errorOf(method, err, attempt)
		}
		select {
		case <-ctx.Done():
			return errorOf(method, err, attempt)
		case <-time.After(wait):
		}
	}
}

// pick is the worker of the next attempt: one that has model (any worker when none has it:
// it then says there is no such model) and, while there are others, not one this call tried.
// When the client holds no worker it searches (at most every 100 ms) until the deadline,
// waiting for a search under way no longer than ctx allows.
func (c *Client) pick(ctx context.Context, model string, tried map[*Worker]bool) (*Worker, error) {
	for {
		if w := c.choose(model, tried); w != nil {
			return w, nil
		}
		err := c.pool.search(ctx, false)
		if w := c.choose(model, tried); w != nil {
			return w, nil
		}
		if code := status.Code(err); code == codes.Unauthenticated || code == codes.PermissionDenied {
			return nil, err
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return nil, status.Errorf(codes.Unavailable, "no TMS worker reachable: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Client) choose(model string, tried map[*Worker]bool) *Worker {
	workers := c.pool.snapshot(model)
	if len(workers) == 0 {
		workers = c.pool.snapshot("")
	}
	fresh := workers[:0:0]
	for _, w := range workers {
		if !tried[w] {
			fresh = append(fresh, w)
		}
	}
	if len(fresh) > 0 {
		workers = fresh
	}
	if len(workers) == 0 {
		return nil
	}
	return c.opts.balancer.Pick(workers)
}

// observe reads the trailers: the worker's load, whether it is still the process the
// connection reached (a restarted worker behind the same connection is dropped), and whether
// it has done a reload since it said its models (then it and its server's other workers are
// asked again which they serve, in the background).
func (c *Client) observe(w *Worker, trailer metadata.MD) {
	report, reported := parseLoad(trailer.Get(loadKey))
	if reported {
		w.setLoad(report)
	}
	if instance, pid, ok := parseIdentity(trailer.Get(identityKey)); ok &&
		(instance != w.InstanceID || pid != w.PID) {
		c.pool.drop(w)
		return
	}
	if reported && report.Reload > w.reloadDone() {
		c.pool.reloaded(w, report.Reload)
	}
}

// ListModels lists the models the server loaded, sorted by name.
func (c *Client) ListModels(ctx context.Context) ([]*tmsv1.ModelInfo, error) {
	resp, err := c.listModels(ctx)
	return resp.GetModels(), err
}

// FailedModels is the models the server found but failed to load, by name, and why (the
// exception's type and message; empty when all loaded). Their calls fail with
// codes.FailedPrecondition, reason ReasonModelNotLoaded.
func (c *Client) FailedModels(ctx context.Context) (map[string]string, error) {
	resp, err := c.listModels(ctx)
	if err != nil {
		return nil, err
	}
	failed := map[string]string{}
	for _, f := range resp.GetFailed() {
		failed[f.GetName()] = f.GetReason()
	}
	return failed, nil
}

func (c *Client) listModels(ctx context.Context) (*tmsv1.ListModelsResponse, error) {
	var resp *tmsv1.ListModelsResponse
	err := c.invoke(ctx, "ListModels", "", func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.ListModels(ctx, &tmsv1.ListModelsRequest{}, o...)
		return err
	})
	return resp, err
}

// GetModelInfo describes one model: its input, its calls, whether it is thread-safe.
func (c *Client) GetModelInfo(ctx context.Context, model string) (*tmsv1.ModelInfo, error) {
	var resp *tmsv1.GetModelInfoResponse
	err := c.invoke(ctx, "GetModelInfo", model, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.GetModelInfo(ctx, &tmsv1.GetModelInfoRequest{Model: model}, o...)
		return err
	})
	return resp.GetInfo(), err
}

// RunImage runs model on one image and returns its result as JSON. args, when not nil, is
// marshalled to the JSON object the model receives.
func (c *Client) RunImage(ctx context.Context, model string, img Image, args any) (json.RawMessage, error) {
	argsJSON, err := marshalArgs(args)
	if err != nil {
		return nil, err
	}
	req := &tmsv1.RunImageRequest{Model: model, Image: img.message(), ArgsJson: argsJSON}
	var resp *tmsv1.RunImageResponse
	err = c.invoke(ctx, "RunImage", model, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.RunImage(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return json.RawMessage(resp.GetResultJson()), nil
}

// RunImageBatch runs model on several images in one call; one JSON result per image.
func (c *Client) RunImageBatch(ctx context.Context, model string, images []Image, args any) ([]json.RawMessage, error) {
	argsJSON, err := marshalArgs(args)
	if err != nil {
		return nil, err
	}
	req := &tmsv1.RunImageBatchRequest{Model: model, ArgsJson: argsJSON}
	for _, img := range images {
		req.Images = append(req.Images, img.message())
	}
	var resp *tmsv1.RunImageBatchResponse
	err = c.invoke(ctx, "RunImageBatch", model, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.RunImageBatch(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rawMessages(resp.GetResultsJson()), nil
}

// ImageToImageResult is what an image-to-image model returns: images and a structured result.
type ImageToImageResult struct {
	Images []Image
	// Result is the model's structured result as JSON; "null" when it has none.
	Result json.RawMessage
}

// RunImageToImage runs an image-to-image model on images and returns the images it made, as
// raw pixels.
func (c *Client) RunImageToImage(ctx context.Context, model string, images []Image, args any) (*ImageToImageResult, error) {
	argsJSON, err := marshalArgs(args)
	if err != nil {
		return nil, err
	}
	req := &tmsv1.RunImageToImageRequest{
		Model: model, ArgsJson: argsJSON, OutputEncoding: tmsv1.Encoding_ENCODING_RAW,
	}
	for _, img := range images {
		req.Images = append(req.Images, img.message())
	}
	var resp *tmsv1.RunImageToImageResponse
	err = c.invoke(ctx, "RunImageToImage", model, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.RunImageToImage(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := &ImageToImageResult{Result: json.RawMessage(resp.GetResultJson())}
	for _, m := range resp.GetImages() {
		out.Images = append(out.Images, imageOf(m))
	}
	return out, nil
}

// RunText runs a text model on one text and returns its result as JSON.
func (c *Client) RunText(ctx context.Context, model, text string, args any) (json.RawMessage, error) {
	argsJSON, err := marshalArgs(args)
	if err != nil {
		return nil, err
	}
	req := &tmsv1.RunTextRequest{Model: model, Text: text, ArgsJson: argsJSON}
	var resp *tmsv1.RunTextResponse
	err = c.invoke(ctx, "RunText", model, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.RunText(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return json.RawMessage(resp.GetResultJson()), nil
}

// RunTextBatch runs a text model on several texts in one call; one JSON result per text.
func (c *Client) RunTextBatch(ctx context.Context, model string, texts []string, args any) ([]json.RawMessage, error) {
	argsJSON, err := marshalArgs(args)
	if err != nil {
		return nil, err
	}
	req := &tmsv1.RunTextBatchRequest{Model: model, Texts: texts, ArgsJson: argsJSON}
	var resp *tmsv1.RunTextBatchResponse
	err = c.invoke(ctx, "RunTextBatch", model, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = w.stub.RunTextBatch(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rawMessages(resp.GetResultsJson()), nil
}

// Health asks the standard gRPC health service whether service ("" for the whole server, or
// a model's name) is SERVING, on a worker that has that model (as a call for it would go:
// a model placed on some workers is NOT_SERVING on the others); a service the server does
// not know is SERVICE_UNKNOWN. It needs no token.
func (c *Client) Health(ctx context.Context, service string) (grpc_health_v1.HealthCheckResponse_ServingStatus, error) {
	var resp *grpc_health_v1.HealthCheckResponse
	err := c.invoke(ctx, "Health", service, func(ctx context.Context, w *Worker, o ...grpc.CallOption) (err error) {
		resp, err = grpc_health_v1.NewHealthClient(w.conn).Check(ctx,
			&grpc_health_v1.HealthCheckRequest{Service: service}, o...)
		return err
	})
	if e := (*Error)(nil); errors.As(err, &e) && e.Code == codes.NotFound {
		return grpc_health_v1.HealthCheckResponse_SERVICE_UNKNOWN, nil
	}
	return resp.GetStatus(), err
}

func rawMessages(results []string) []json.RawMessage {
	out := make([]json.RawMessage, len(results))
	for i, r := range results {
		out[i] = json.RawMessage(r)
	}
	return out
}

var errArgs = errors.New("tms: args")

func marshalArgs(args any) (string, error) {
	if args == nil {
		return "", nil
	}
	data, err := json.Marshal(args)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errArgs, err)
	}
	return string(data), nil
}
