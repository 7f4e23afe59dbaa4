// Command tms-go calls a TMS server with the tmsclient package: an example of its use, and
// what the polyglot tests run.
//
//	tms-go [-addr host:port] models
//	tms-go [-addr host:port] [-args JSON] [-decode] run MODEL IMAGE_FILE
//	tms-go [-addr host:port] [-args JSON] [-decode] i2i MODEL IMAGE_FILE OUT_FILE
//
// run prints the model's JSON result. i2i writes the first output image's raw pixels to
// OUT_FILE and prints its dtype, shape and colour order as JSON. -decode decodes the PNG/JPEG
// in Go and sends raw RGB pixels instead of the file. Errors go to stderr as
// "error: <gRPC code>: <message>", with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"os"
	"time"

	"google.golang.org/grpc/status"

	"github.com/tinymodelserver/tms/clients/go/tmsclient"
)

func main() {
	addr := flag.String("addr", "localhost:50051", "server address")
	args := flag.String("args", "", "model args, a JSON object")
	decode := flag.Bool("decode", false, "decode the image in Go and send raw pixels")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of each call")
	flag.Parse()
	if err := run(*addr, *args, *decode, *timeout, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", status.Code(err), err)
		os.Exit(1)
	}
}

func run(addr, argsJSON string, decode bool, timeout time.Duration, argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("usage: tms-go [flags] models | run MODEL IMAGE | i2i MODEL IMAGE OUT")
	}
	var args any
	if argsJSON != "" {
		if err := json.Unmarshal([]byte(argsJSON), &args); err != nil {
			return fmt.Errorf("-args: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := tmsclient.Dial(ctx, addr, tmsclient.WithTimeout(timeout))
	if err != nil {
		return err
	}
	defer client.Close()

	switch {
	case argv[0] == "models" && len(argv) == 1:
		models, err := client.ListModels(ctx)
		if err != nil {
			return err
		}
		for _, m := range models {
			fmt.Println(m.GetName())
		}
	case argv[0] == "run" && len(argv) == 3:
		img, err := readImage(argv[2], decode)
		if err != nil {
			return err
		}
		result, err := client.RunImage(ctx, argv[1], img, args)
		if err != nil {
			return err
		}
		fmt.Println(string(result))
	case argv[0] == "i2i" && len(argv) == 4:
		img, err := readImage(argv[2], decode)
		if err != nil {
			return err
		}
		out, err := client.RunImageToImage(ctx, argv[1], []tmsclient.Image{img}, args)
		if err != nil {
			return err
		}
		if len(out.Images) == 0 {
			return fmt.Errorf("model %s returned no image", argv[1])
		}
		first := out.Images[0]
		if err := os.WriteFile(argv[3], first.Data, 0o644); err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(map[string]any{
			"dtype": first.DType.String(), "shape": first.Shape, "color": first.Color.String(),
			"result": out.Result,
		})
	default:
		return fmt.Errorf("unknown command %q; use models, run or i2i", argv)
	}
	return nil
}

func readImage(path string, decode bool) (tmsclient.Image, error) {
	file, err := os.ReadFile(path)
	if err != nil {
		return tmsclient.Image{}, err
	}
	if !decode {
		return tmsclient.EncodedImage(file)
	}
	f, err := os.Open(path)
	if err != nil {
		return tmsclient.Image{}, err
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		return tmsclient.Image{}, fmt.Errorf("decode %s: %w", path, err)
	}
	return tmsclient.FromImage(img), nil
}
