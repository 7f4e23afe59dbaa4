package tmsclient

import (
	"encoding/binary"
	"math"
	"testing"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

func TestFromPixelsEveryDType(t *testing.T) {
	shape := []int64{1, 2}
	check := func(img Image, err error, dtype tmsv1.DType, size int) {
		t.Helper()
		if err != nil || img.DType != dtype || len(img.Data) != 2*size ||
			img.Encoding != tmsv1.Encoding_ENCODING_RAW {
			t.Fatalf("%v: %+v %v", dtype, img, err)
		}
	}
	gray := tmsv1.ColorOrder_COLOR_ORDER_GRAY
	img, err := FromPixels([]uint8{1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_UINT8, 1)
	img, err = FromPixels([]int8{-1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_INT8, 1)
	img, err = FromPixels([]uint16{1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_UINT16, 2)
	img, err = FromPixels([]int16{1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_INT16, 2)
	img, err = FromPixels([]int32{1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_INT32, 4)
	img, err = FromPixels([]int64{1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_INT64, 8)
	img, err = FromPixels([]float32{1.5, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_FLOAT32, 4)
	if math.Float32frombits(binary.LittleEndian.Uint32(img.Data)) != 1.5 {
		t.Fatal("float32 is not little-endian")
	}
	img, err = FromPixels([]float64{1, 2}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_FLOAT64, 8)
	img, err = FromPixels([]bool{true, false}, shape, gray)
	check(img, err, tmsv1.DType_D_TYPE_BOOL, 1)
	img, err = RawImage([]byte{0, 60, 0, 64}, shape, tmsv1.DType_D_TYPE_FLOAT16, gray)
	check(img, err, tmsv1.DType_D_TYPE_FLOAT16, 2)
}

func TestRawImageChecksItsSize(t *testing.T) {
	if _, err := FromPixels([]uint8{1, 2, 3}, []int64{1, 2}, tmsv1.ColorOrder_COLOR_ORDER_GRAY); err == nil {
		t.Fatal("3 bytes filled a 1x2 image")
	}
	if _, err := RawImage([]byte{1}, []int64{1, 1}, tmsv1.DType_D_TYPE_UNSPECIFIED, 0); err == nil {
		t.Fatal("an unspecified dtype was accepted")
	}
}

func TestEncodedImage(t *testing.T) {
	if img, err := EncodedImage([]byte("\x89PNG\r\n\x1a\nrest")); err != nil || img.Encoding != tmsv1.Encoding_ENCODING_PNG {
		t.Fatal("PNG not recognised")
	}
	if img, err := EncodedImage([]byte{0xff, 0xd8, 0xff}); err != nil || img.Encoding != tmsv1.Encoding_ENCODING_JPEG {
		t.Fatal("JPEG not recognised")
	}
	if _, err := EncodedImage([]byte("GIF89a")); err == nil {
		t.Fatal("a GIF passed")
	}
}
