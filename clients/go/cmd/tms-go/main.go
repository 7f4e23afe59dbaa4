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
// "error: <gRPC code>: <message>", with exit status 1; -h prints the usage (exit status 0), as
// does a missing or wrong command after saying what is wrong (exit status 2, before any call).
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

// usage is what -h prints, and a command line without a command, or a wrong one, before its error.
const usage = `usage: tms-go [flags] models
       tms-go [flags] run MODEL IMAGE_FILE
       tms-go [flags] i2i MODEL IMAGE_FILE OUT_FILE

Calls a TMS server with the Go client (tmsclient): an example of its use.

  models  list the models the server serves, one a line
  run     run MODEL on IMAGE_FILE (PNG or JPEG) and print its JSON result
  i2i     run the image-to-image MODEL on IMAGE_FILE, write the first output image's raw
          pixels to OUT_FILE and print its dtype, shape and colour order as JSON

flags:
`

// arguments is how many words each command takes, itself included.
var arguments = map[string]int{"models": 1, "run": 3, "i2i": 4}

func main() {
	addr := flag.String("addr", "localhost:50051", "the server: host:port, or dns:///name:port for every address of a name")
	args := flag.String("args", "", "model args, a JSON object")
	decode := flag.Bool("decode", false, "decode the image in Go and send raw pixels")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of each call")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usage)
		flag.PrintDefaults()
	}
	flag.Parse()
	if argv := flag.Args(); len(argv) == 0 || arguments[argv[0]] != len(argv) {
		if len(argv) == 0 {
			fmt.Fprintln(os.Stderr, "tms-go: no command given")
		} else if arguments[argv[0]] == 0 {
			fmt.Fprintf(os.Stderr, "tms-go: unknown command %q\n", argv[0])
		} else {
			fmt.Fprintf(os.Stderr, "tms-go: %s takes %d arguments, not %d\n", argv[0], arguments[argv[0]]-1, len(argv)-1)
		}
		flag.Usage()
		os.Exit(2) // as the flag package exits on a bad flag
	}
	if err := run(*addr, *args, *decode, *timeout, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", status.Code(err), err)
		os.Exit(1)
	}
}

// run calls the server for argv, a command with its arguments checked by main.
func run(addr, argsJSON string, decode bool, timeout time.Duration, argv []string) error {
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

	switch argv[0] {
	case "models":
		models, err := client.ListModels(ctx)
		if err != nil {
			return err
		}
		for _, m := range models {
			fmt.Println(m.GetName())
		}
	case "run":
		img, err := readImage(argv[2], decode)
		if err != nil {
			return err
		}
		result, err := client.RunImage(ctx, argv[1], img, args)
		if err != nil {
			return err
		}
		fmt.Println(string(result))
	case "i2i":
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
