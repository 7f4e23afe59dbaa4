// Command tms-conformance is the Go client's conformance runner: it makes every call of a
// vectors file (tests/conformance/vectors.json) against a live server with package tmsclient
// and prints one JSON line per vector, {"name": ..., "outcome": ...}, in file order, as
// tests/conformance/README.md defines them.
//
//	tms-conformance --target HOST:PORT --vectors FILE [--connect-timeout S]
//
// It exits 0 once it has printed a line for every vector, whatever the outcomes; 2 when it
// cannot read the vectors.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/status"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
	"github.com/tinymodelserver/tms/clients/go/tmsclient"
)

// vector is one call of the vectors file ("expect" is for the test that reads the output).
type vector struct {
	Name   string          `json:"name"`
	Call   string          `json:"call"`
	Model  string          `json:"model"`
	Images []imageSpec     `json:"images"`
	Texts  []string        `json:"texts"`
	Args   json.RawMessage `json:"args"`
	Repeat int             `json:"repeat"` // calls to make (0: one); the first outcome that differs is printed
}

// imageSpec is raw pixels made by the README's formula, or a PNG/JPEG file beside the vectors.
type imageSpec struct {
	Generate *struct {
		DType string  `json:"dtype"`
		Shape []int64 `json:"shape"`
	} `json:"generate"`
	ColorOrder string `json:"color_order"`
	File       string `json:"file"`
}

// outcome is what one vector printed: a result, or {"error": ...}.
type outcome map[string]any

const callTimeout = 30 * time.Second

func main() {
	target := flag.String("target", "", "server address, HOST:PORT")
	vectorsFile := flag.String("vectors", "vectors.json", "the vectors file")
	connectTimeout := flag.Float64("connect-timeout", 10, "seconds the start may take")
	flag.Parse()
	var file struct {
		Vectors []vector `json:"vectors"`
	}
	data, err := os.ReadFile(*vectorsFile)
	if err == nil {
		err = json.Unmarshal(data, &file)
	}
	if err != nil || *target == "" {
		fmt.Fprintf(os.Stderr, "tms-conformance: --target and a readable --vectors file needed: %v\n", err)
		os.Exit(2)
	}
	dir := filepath.Dir(*vectorsFile)

	ctx := context.Background()
	c, dialErr := tmsclient.Dial(ctx, *target, tmsclient.WithTimeout(callTimeout), tmsclient.WithConnectTimeout(time.Duration(*connectTimeout*float64(time.Second))))
	if dialErr == nil {
		defer c.Close()
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	for _, v := range file.Vectors {
		result := failure(dialErr)
		if dialErr == nil {
			result = attempt(ctx, c, dir, v)
			first, _ := json.Marshal(result)
			for i := 1; i < v.Repeat; i++ { // the first outcome that differs, else the first
				other := attempt(ctx, c, dir, v)
				if again, _ := json.Marshal(other); string(again) != string(first) {
					result = other
					break
				}
			}
		}
		if err := out.Encode(map[string]any{"name": v.Name, "outcome": result}); err != nil {
			fmt.Fprintf(os.Stderr, "tms-conformance: %s: %v\n", v.Name, err)
			os.Exit(1)
		}
	}
}

// attempt makes the call of v once: its outcome, or its failure's.
func attempt(ctx context.Context, c *tmsclient.Client, dir string, v vector) outcome {
	result, err := run(ctx, c, dir, v)
	if err != nil {
		return failure(err)
	}
	return result
}

// run makes the call of v and returns its outcome, or the error it failed with.
func run(ctx context.Context, c *tmsclient.Client, dir string, v vector) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var args any // none unless the vector has some: a nil json.RawMessage would send "null"
	if len(v.Args) > 0 {
		args = v.Args
	}
	images := make([]tmsclient.Image, len(v.Images))
	for i, spec := range v.Images {
		img, err := makeImage(dir, spec)
		if err != nil {
			return nil, err
		}
		images[i] = img
	}
	switch v.Call {
	case "Health":
		health, err := c.Health(ctx, v.Model)
		if err != nil {
			return nil, err
		}
		return outcome{"health": health.String()}, nil
	case "ListModels":
		models, err := c.ListModels(ctx)
		if err != nil {
			return nil, err
		}
		names := []string{}
		for _, m := range models {
			names = append(names, m.GetName())
		}
		failed, err := c.FailedModels(ctx)
		return outcome{"models": names, "failed": failed}, err
	case "GetModelInfo":
		info, err := c.GetModelInfo(ctx, v.Model)
		var delay any // seconds, null when the model does not batch
		if d := info.GetMaxBatchDelay(); d != nil {
			delay = d.AsDuration().Seconds()
		}
		return outcome{"model": map[string]any{
			"name": info.GetName(), "version": info.GetVersion(),
			"max_batch_size": info.GetMaxBatchSize(), "max_batch_delay": delay,
			"args_schema": parsed(info.GetArgsSchemaJson()),
		}}, err
	case "RunImage":
		result, err := c.RunImage(ctx, v.Model, images[0], args)
		return outcome{"result": parsed(string(result))}, err
	case "RunImageBatch":
		results, err := c.RunImageBatch(ctx, v.Model, images, args)
		return outcome{"results": results}, err
	case "RunImageToImage":
		answer, err := c.RunImageToImage(ctx, v.Model, images, args)
		if err != nil {
			return nil, err
		}
		described := []map[string]any{}
		for _, img := range answer.Images {
			digest := sha256.Sum256(img.Data)
			described = append(described, map[string]any{
				"dtype":       strings.ToLower(strings.TrimPrefix(img.DType.String(), "D_TYPE_")),
				"shape":       img.Shape,
				"color_order": strings.TrimPrefix(img.Color.String(), "COLOR_ORDER_"),
				"sha256":      hex.EncodeToString(digest[:]),
			})
		}
		return outcome{"images": described, "result": parsed(string(answer.Result))}, nil
	case "RunImageStream":
		frames := []outcome{}
		for r, err := range c.RunImageStream(ctx, v.Model, slices.Values(images), args) {
			if err != nil {
				return nil, err
			}
			if r.Err != nil {
				frames = append(frames, failure(r.Err))
			} else {
				frames = append(frames, outcome{"result": parsed(string(r.Result))})
			}
		}
		return outcome{"frames": frames}, nil
	case "RunText":
		result, err := c.RunText(ctx, v.Model, v.Texts[0], args)
		return outcome{"result": parsed(string(result))}, err
	case "RunTextBatch":
		results, err := c.RunTextBatch(ctx, v.Model, v.Texts, args)
		return outcome{"results": results}, err
	}
	return nil, fmt.Errorf("unknown call %q", v.Call)
}

// failure is the outcome of a call that failed: its code, ErrorInfo reason and BadRequest fields.
func failure(err error) outcome {
	if err == nil {
		return nil
	}
	failed := map[string]any{"code": code.Code_name[int32(status.Code(err))], "reason": "", "field_violations": []string{}}
	var e *tmsclient.Error
	if errors.As(err, &e) {
		fields := []string{}
		for _, fv := range e.FieldViolations {
			fields = append(fields, fv.Field)
		}
		failed["reason"], failed["field_violations"] = e.Reason, fields
	}
	return outcome{"error": failed}
}

// parsed is a JSON text as a value to print: itself, or null when empty.
func parsed(text string) json.RawMessage {
	if text == "" {
		return json.RawMessage("null")
	}
	return json.RawMessage(text)
}

// makeImage is the image a spec names: a file sent as it is, or generated raw pixels.
func makeImage(dir string, spec imageSpec) (tmsclient.Image, error) {
	if spec.File != "" {
		file, err := os.ReadFile(filepath.Join(dir, spec.File))
		if err != nil {
			return tmsclient.Image{}, err
		}
		return tmsclient.EncodedImage(file)
	}
	if spec.Generate == nil {
		return tmsclient.Image{}, errors.New("an image is neither generated nor a file")
	}
	dtype, ok := tmsv1.DType_value["D_TYPE_"+strings.ToUpper(spec.Generate.DType)]
	order, known := tmsv1.ColorOrder_value["COLOR_ORDER_"+spec.ColorOrder]
	if !ok || !known {
		return tmsclient.Image{}, fmt.Errorf("unknown dtype %q or colour order %q", spec.Generate.DType, spec.ColorOrder)
	}
	d := tmsv1.DType(dtype)
	return tmsclient.RawImage(pixels(d, spec.Generate.Shape), spec.Generate.Shape, d, tmsv1.ColorOrder(order))
}

// pixels are the bytes of a generated image (README.md, "Pixels"): element i of dtype d holds
// the formula's value, little-endian.
func pixels(d tmsv1.DType, shape []int64) []byte {
	n := int64(1)
	for _, s := range shape {
		n *= s
	}
	le := binary.LittleEndian
	var data []byte
	for i := range n {
		switch d {
		case tmsv1.DType_D_TYPE_UINT8:
			data = append(data, byte(i%251))
		case tmsv1.DType_D_TYPE_INT8:
			data = append(data, byte(int8(i%251-125)))
		case tmsv1.DType_D_TYPE_UINT16:
			data = le.AppendUint16(data, uint16(i*257%65536))
		case tmsv1.DType_D_TYPE_INT16:
			data = le.AppendUint16(data, uint16(int16(i*257%65536-32768)))
		case tmsv1.DType_D_TYPE_INT32:
			data = le.AppendUint32(data, uint32(int32(i*65537-1000000)))
		case tmsv1.DType_D_TYPE_INT64:
			data = le.AppendUint64(data, uint64(i*4294967311-1099511627776))
		case tmsv1.DType_D_TYPE_FLOAT16:
			data = le.AppendUint16(data, tmsclient.Float16Bits(float32(i%64)*0.25-8))
		case tmsv1.DType_D_TYPE_FLOAT32:
			data = le.AppendUint32(data, math.Float32bits(float32(float64(i)*0.25-8)))
		case tmsv1.DType_D_TYPE_FLOAT64:
			data = le.AppendUint64(data, math.Float64bits(float64(i)*0.125-16))
		case tmsv1.DType_D_TYPE_BOOL:
			if i%3 == 0 {
				data = append(data, 1)
			} else {
				data = append(data, 0)
			}
		}
	}
	return data
}
