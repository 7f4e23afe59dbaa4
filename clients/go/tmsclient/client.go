// Package tmsclient is a small Go client for TMS (Tiny Model Server).
//
// It wraps the generated tms.v1 stubs (github.com/tinymodelserver/tms/clients/go/gen/tms/v1)
// with the three things most services need: list the models, run an image through a model and
// read its JSON result, and run an image-to-image model and read the pixels back.
//
//	c, err := tmsclient.Dial("localhost:50051")
//	if err != nil { ... }
//	defer c.Close()
//	img, _ := tmsclient.EncodedImage(jpegBytes)
//	result, err := c.RunImage(ctx, "face", img, nil) // JSON: {"faces": [...]}
//
// Errors are gRPC status errors (wrapped with the call's name): status.Code(err) gives
// codes.NotFound for an unknown model, codes.InvalidArgument for a malformed image, and so on.
package tmsclient

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

// Client calls the tms.v1.ModelService of one server.
type Client struct {
	conn *grpc.ClientConn
	stub tmsv1.ModelServiceClient
}

// Dial connects to a TMS server ("host:port"). Without options the connection is plaintext;
// pass grpc.WithTransportCredentials(...) for TLS. The connection is made lazily, on the
// first call.
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("tms: connect to %s: %w", target, err)
	}
	return &Client{conn: conn, stub: tmsv1.NewModelServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client, for the calls this package does not wrap.
func (c *Client) Stub() tmsv1.ModelServiceClient { return c.stub }

// ListModels lists the models the server loaded, sorted by name.
func (c *Client) ListModels(ctx context.Context) ([]*tmsv1.ModelInfo, error) {
	resp, err := c.stub.ListModels(ctx, &tmsv1.ListModelsRequest{})
	if err != nil {
		return nil, fmt.Errorf("tms: ListModels: %w", err)
	}
	return resp.GetModels(), nil
}

// RunImage runs model on one image and returns its result as JSON. args, when not nil, is
// marshalled to the JSON object the model receives.
func (c *Client) RunImage(ctx context.Context, model string, img Image, args any) (json.RawMessage, error) {
	argsJSON, err := marshalArgs(args)
	if err != nil {
		return nil, err
	}
	resp, err := c.stub.RunImage(ctx, &tmsv1.RunImageRequest{
		Model: model, Image: img.message(), ArgsJson: argsJSON,
	})
	if err != nil {
		return nil, fmt.Errorf("tms: RunImage %q: %w", model, err)
	}
	return json.RawMessage(resp.GetResultJson()), nil
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
	resp, err := c.stub.RunImageToImage(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("tms: RunImageToImage %q: %w", model, err)
	}
	out := &ImageToImageResult{Result: json.RawMessage(resp.GetResultJson())}
	for _, m := range resp.GetImages() {
		out.Images = append(out.Images, imageOf(m))
	}
	return out, nil
}

func marshalArgs(args any) (string, error) {
	if args == nil {
		return "", nil
	}
	data, err := json.Marshal(args)
	if err != nil {
		return "", fmt.Errorf("tms: args: %w", err)
	}
	return string(data), nil
}
