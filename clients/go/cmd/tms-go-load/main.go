// Command tms-go-load drives a TMS server with one tmsclient.Client from many goroutines and
// reports which worker processes answered: what tests/test_go_sdk.py runs against real
// servers.
//
//	tms-go-load [-addr host:port] [-token T] [-ca CA.pem] [-balancer least|rr] [-goroutines N] [-duration D] [-timeout T] [-attempts A] [-connect-timeout D] [-wait-for-server] [-pause] load MODEL
//	tms-go-load [flags as load's] rounds MODEL
//	tms-go-load [-addr host:port] [-token T] tour IMAGE_MODEL TEXT_MODEL
//	tms-go-load [-addr host:port] [-token T] [-goroutines N] close MODEL
//
// load calls MODEL (whose JSON result holds "pid") from N goroutines for D, or -calls times
// in all, each within -timeout and sent at most -attempts times, and prints {"calls",
// "failures", "pids": {pid: calls}, "workers": workers held}; with -pause it first prints
// {"workers": [pid, ...]}, the workers it holds, and waits for a line on stdin (a test stops
// one of them meanwhile). rounds does what load does each time a line comes on stdin, over
// the same client, until stdin ends (a test reloads the model between rounds). tour calls
// every RPC once, RunImage with every dtype, and prints what came back. close starts N calls
// of MODEL and one stream of it with args {"sleep": 3}, closes the client 300 ms later, makes
// one more call, and prints how each ended: {"in_flight": [{"code", "message", "seconds"}],
// "stream": {...}, "after": {...}}. -connect-timeout bounds the start (10 s by default), and
// -wait-for-server has it wait, within that, for a server that is not listening yet
// (tmsclient.WithWaitForServer) instead of failing at once. Errors go to stderr as
// "error: <gRPC code>: <message>", with exit status 1.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
	"github.com/tinymodelserver/tms/clients/go/tmsclient"
)

func main() {
	addr := flag.String("addr", "localhost:50051", "server address")
	token := flag.String("token", "", "bearer token")
	balancer := flag.String("balancer", "least", "least or rr")
	goroutines := flag.Int("goroutines", 4, "concurrent callers")
	duration := flag.Duration("duration", 2*time.Second, "how long to call")
	calls := flag.Int("calls", 0, "stop after this many calls in all (0: after -duration)")
	ca := flag.String("ca", "", "TLS: the CA certificate (PEM) to trust; plaintext without it")
	refresh := flag.Duration("refresh", 2*time.Second, "how often to look for missing workers")
	timeout := flag.Duration("timeout", 30*time.Second, "each call's deadline")
	pause := flag.Bool("pause", false, "load: print the workers' pids, then wait for a line on stdin")
	attempts := flag.Int("attempts", tmsclient.DefaultRetry().Attempts, "sends of one call, the first included")
	connectTimeout := flag.Duration("connect-timeout", 10*time.Second, "how long the start waits for the server")
	waitForServer := flag.Bool("wait-for-server", false, "wait at an address that refuses connections, not fail at once")
	flag.Parse()
	retry := tmsclient.DefaultRetry()
	retry.Attempts = *attempts
	opts := []tmsclient.Option{
		tmsclient.WithTimeout(*timeout), tmsclient.WithConnectTimeout(*connectTimeout),
		tmsclient.WithWaitForServer(*waitForServer), tmsclient.WithRefreshInterval(*refresh),
		tmsclient.WithRetry(retry),
	}
	if *token != "" {
		opts = append(opts, tmsclient.WithToken(*token))
	}
	if *ca != "" {
		pem, err := os.ReadFile(*ca)
		if err != nil {
			fmt.Fprintf(os.Stderr, "error: %s\n", err)
			os.Exit(1)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		opts = append(opts, tmsclient.WithTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}))
	}
	if *balancer == "rr" {
		opts = append(opts, tmsclient.WithBalancer(tmsclient.RoundRobin()))
	}
	ctx := context.Background()
	client, err := tmsclient.Dial(ctx, *addr, opts...)
	if err == nil {
		defer client.Close()
		args := flag.Args()
		switch {
		case len(args) == 2 && args[0] == "load":
			if *pause {
				err = pauseAfterDial(client)
			}
			if err == nil {
				err = load(ctx, client, args[1], *goroutines, *duration, int64(*calls))
			}
		case len(args) == 2 && args[0] == "rounds":
			lines := bufio.NewScanner(os.Stdin)
			for err == nil && lines.Scan() {
				err = load(ctx, client, args[1], *goroutines, *duration, int64(*calls))
			}
			if err == nil {
				err = lines.Err()
			}
		case len(args) == 3 && args[0] == "tour":
			err = tour(ctx, client, args[1], args[2])
		case len(args) == 2 && args[0] == "close":
			err = closeUnderLoad(ctx, client, args[1], *goroutines)
		default:
			err = fmt.Errorf("usage: tms-go-load [flags] load MODEL | rounds MODEL | tour IMAGE_MODEL TEXT_MODEL | close MODEL")
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", status.Code(err), err)
		os.Exit(1)
	}
}

// pauseAfterDial prints the pids of the workers client holds and waits for a line on stdin.
func pauseAfterDial(client *tmsclient.Client) error {
	pids := []int64{}
	for _, w := range client.Workers() {
		pids = append(pids, w.PID)
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"workers": pids}); err != nil {
		return err
	}
	_, err := bufio.NewReader(os.Stdin).ReadString('\n')
	return err
}

func load(ctx context.Context, client *tmsclient.Client, model string, goroutines int, d time.Duration, limit int64) error {
	img, err := tmsclient.FromPixels([]uint8{1, 2, 3, 4}, []int64{2, 2}, tmsv1.ColorOrder_COLOR_ORDER_GRAY)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	pids := map[string]int{}
	failures := []string{}
	var started atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for (limit > 0 && started.Add(1) <= limit) || (limit == 0 && time.Now().Before(stop)) {
				result, err := client.RunImage(ctx, model, img, nil)
				var reply struct{ PID int64 }
				if err == nil {
					err = json.Unmarshal(result, &reply)
				}
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					pids[strconv.FormatInt(reply.PID, 10)]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	total := len(failures)
	for _, n := range pids {
		total += n
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"calls": total, "failures": failures, "pids": pids, "workers": len(client.Workers()),
	})
}

// tour calls every RPC once and RunImage with each dtype image.proto carries.
func tour(ctx context.Context, client *tmsclient.Client, imageModel, textModel string) error {
	out := map[string]any{}
	shape := []int64{2, 2}
	gray := tmsv1.ColorOrder_COLOR_ORDER_GRAY
	images := map[string]func() (tmsclient.Image, error){
		"uint8":   func() (tmsclient.Image, error) { return tmsclient.FromPixels([]uint8{1, 2, 3, 4}, shape, gray) },
		"int8":    func() (tmsclient.Image, error) { return tmsclient.FromPixels([]int8{-1, 2, 3, 4}, shape, gray) },
		"uint16":  func() (tmsclient.Image, error) { return tmsclient.FromPixels([]uint16{1, 2, 3, 400}, shape, gray) },
		"int16":   func() (tmsclient.Image, error) { return tmsclient.FromPixels([]int16{-1, 2, 3, 4}, shape, gray) },
		"int32":   func() (tmsclient.Image, error) { return tmsclient.FromPixels([]int32{-1, 2, 3, 4}, shape, gray) },
		"int64":   func() (tmsclient.Image, error) { return tmsclient.FromPixels([]int64{-1, 2, 3, 4}, shape, gray) },
		"float32": func() (tmsclient.Image, error) { return tmsclient.FromPixels([]float32{0.5, 2, 3, 4}, shape, gray) },
		"float64": func() (tmsclient.Image, error) { return tmsclient.FromPixels([]float64{0.5, 2, 3, 4}, shape, gray) },
		"bool": func() (tmsclient.Image, error) {
			return tmsclient.FromPixels([]bool{true, false, true, true}, shape, gray)
		},
		"float16": func() (tmsclient.Image, error) { // 1.0, 2.0, 0.5, 1.0 as IEEE half bits
			return tmsclient.RawImage([]byte{0, 0x3c, 0, 0x40, 0, 0x38, 0, 0x3c}, shape, tmsv1.DType_D_TYPE_FLOAT16, gray)
		},
	}
	dtypes := map[string]json.RawMessage{}
	for name, build := range images {
		img, err := build()
		if err != nil {
			return err
		}
		if dtypes[name], err = client.RunImage(ctx, imageModel, img, nil); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	out["dtypes"] = dtypes
	img, _ := images["uint8"]()
	batch, err := client.RunImageBatch(ctx, imageModel, []tmsclient.Image{img, img}, nil)
	if err != nil {
		return err
	}
	out["image_batch"] = batch
	if out["text"], err = client.RunText(ctx, textModel, "hello world", nil); err != nil {
		return err
	}
	if out["text_batch"], err = client.RunTextBatch(ctx, textModel, []string{"a", "b c"}, nil); err != nil {
		return err
	}
	info, err := client.GetModelInfo(ctx, imageModel)
	if err != nil {
		return err
	}
	out["info"] = info.GetName()
	models, err := client.ListModels(ctx)
	if err != nil {
		return err
	}
	var names []string
	for _, m := range models {
		names = append(names, m.GetName())
	}
	out["models"] = names
	health, err := client.Health(ctx, "")
	if err != nil {
		return err
	}
	out["health"] = health.String()
	_, err = client.RunImage(ctx, "no_such_model", img, nil)
	var tmsErr *tmsclient.Error
	if !errors.As(err, &tmsErr) {
		return fmt.Errorf("an unknown model gave %v, not a *tmsclient.Error", err)
	}
	out["unknown_model"] = map[string]any{"code": tmsErr.Code.String(), "method": tmsErr.Method}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// closeUnderLoad closes client while goroutines calls of model, and one stream, are in flight,
// then calls it once more, and reports how each ended and after how long.
func closeUnderLoad(ctx context.Context, client *tmsclient.Client, model string, goroutines int) error {
	img, err := tmsclient.FromPixels([]uint8{1, 2, 3, 4}, []int64{2, 2}, tmsv1.ColorOrder_COLOR_ORDER_GRAY)
	if err != nil {
		return err
	}
	ended := func(err error, since time.Time) map[string]any {
		return map[string]any{
			"code": status.Code(err).String(), "message": fmt.Sprint(err),
			"seconds": time.Since(since).Seconds(),
		}
	}
	errs := make(chan error, goroutines)
	for range goroutines {
		go func() {
			_, err := client.RunImage(ctx, model, img, map[string]any{"sleep": 3})
			errs <- err
		}()
	}
	streamed := make(chan error, 1)
	go func() {
		var last error
		frames := func(yield func(tmsclient.Image) bool) { yield(img) }
		for _, err := range client.RunImageStream(ctx, model, frames, map[string]any{"sleep": 3}) {
			last = err
		}
		streamed <- last
	}()
	time.Sleep(300 * time.Millisecond)
	closed := time.Now()
	if err := client.Close(); err != nil {
		return err
	}
	var inFlight []map[string]any
	for range goroutines {
		inFlight = append(inFlight, ended(<-errs, closed)) // seconds: after Close
	}
	stream := ended(<-streamed, closed)
	after := time.Now()
	_, err = client.RunImage(ctx, model, img, nil)
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"in_flight": inFlight, "stream": stream, "after": ended(err, after),
	})
}
