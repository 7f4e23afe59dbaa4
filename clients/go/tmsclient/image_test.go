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

// half is the value of IEEE 754 half-precision bits h.
func half(h uint16) float64 {
	sign, exp, mant := 1.0, int(h>>10&0x1f), float64(h&0x3ff)
	if h&0x8000 != 0 {
		sign = -1
	}
	switch exp {
	case 0:
		return sign * math.Ldexp(mant, -24)
	case 0x1f:
		if mant != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * math.Ldexp(1024+mant, exp-25)
}

func TestFloat16Bits(t *testing.T) {
	for f, want := range map[float32]uint16{
		0: 0x0000, 1: 0x3c00, -8: 0xc800, 7.75: 0x47c0, 0.25: 0x3400, -2: 0xc000,
		65504: 0x7bff, 65520: 0x7c00, 1e10: 0x7c00, -1e10: 0xfc00, 0.1: 0x2e66,
		1 + 1.0/2048: 0x3c00, 1 + 3.0/2048: 0x3c02, // ties go to even
		float32(math.Ldexp(1, -24)): 0x0001, float32(math.Ldexp(1, -25)): 0x0000,
		float32(math.Ldexp(3, -26)): 0x0001, float32(math.Ldexp(1, -14)): 0x0400,
		float32(math.Inf(-1)): 0xfc00,
	} {
		if got := Float16Bits(f); got != want {
			t.Errorf("Float16Bits(%g) = %#04x, want %#04x", f, got, want)
		}
	}
	if Float16Bits(float32(math.Copysign(0, -1))) != 0x8000 || Float16Bits(float32(math.NaN()))&0x7fff <= 0x7c00 {
		t.Error("-0 or NaN")
	}
	for h := range 0x10000 { // every half that is a number comes back to its bits
		if v := half(uint16(h)); !math.IsNaN(v) {
			if got := Float16Bits(float32(v)); got != uint16(h) {
				t.Fatalf("%#04x (%g) came back as %#04x", h, v, got)
			}
		}
	}
	for i := range 64 { // the conformance formula, (i mod 64) × 0.25 − 8
		f := float32(i)*0.25 - 8
		if v := half(Float16Bits(f)); v != float64(f) {
			t.Fatalf("%g became %g", f, v)
		}
	}
}
