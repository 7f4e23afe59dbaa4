// Command hello calls a TMS server from Go: the example of the main README's "Use it from Go".
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
	"github.com/tinymodelserver/tms/clients/go/tmsclient"
)

func main() {
	ctx := context.Background()
	// One connection per worker process of the server, found through GetWorkerInfo.
	client, err := tmsclient.Dial(ctx, os.Getenv("TMS_ADDR"), // e.g. "localhost:50051"
		tmsclient.WithToken(os.Getenv("TMS_TOKEN")), // "": no token
		tmsclient.WithBalancer(tmsclient.RoundRobin()))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	fmt.Println("workers:", len(client.Workers()))

	// A 2x2 grayscale image of float32 pixels; tmsclient.EncodedImage(pngBytes) sends a file.
	img, err := tmsclient.FromPixels([]float32{0, 0.25, 0.5, 1}, []int64{2, 2},
		tmsv1.ColorOrder_COLOR_ORDER_GRAY)
	if err != nil {
		log.Fatal(err)
	}
	for range 4 { // each call on the next worker; retried on another if one dies mid-call
		result, err := client.RunImage(ctx, "mean", img, nil)
		if err != nil {
			log.Fatal(err) // a *tmsclient.Error: its Code is the gRPC code
		}
		fmt.Println(string(result)) // {"mean":0.4375}
	}
}
