package tmsclient

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"

	tmsv1 "github.com/tinymodelserver/tms/clients/go/gen/tms/v1"
)

// Image is an image as TMS carries it: raw pixels described by dtype, shape and colour order,
// or a PNG/JPEG file.
type Image struct {
	// Data holds the pixels (C order, little-endian) or the encoded file.
	Data []byte
	// Shape is (height, width) or (height, width, channels) for raw pixels.
	Shape []int64
	// DType is the element type of raw pixels.
	DType tmsv1.DType
	// Color says what the channels mean; the server converts to the model's colour order.
	Color tmsv1.ColorOrder
	// Encoding says whether Data is raw pixels or a PNG/JPEG file.
	Encoding tmsv1.Encoding
}

// EncodedImage is a PNG or JPEG file sent as it is; the server decodes it.
func EncodedImage(file []byte) (Image, error) {
	switch {
	case bytes.HasPrefix(file, []byte("\x89PNG\r\n\x1a\n")):
		return Image{Data: file, Encoding: tmsv1.Encoding_ENCODING_PNG}, nil
	case bytes.HasPrefix(file, []byte{0xff, 0xd8}):
		return Image{Data: file, Encoding: tmsv1.Encoding_ENCODING_JPEG}, nil
	}
	return Image{}, errors.New("tms: bytes are neither a PNG nor a JPEG file")
}

// FromImage converts a Go image to raw 8-bit pixels: GRAY for *image.Gray, RGB for opaque
// images, RGBA (not premultiplied) otherwise.
func FromImage(img image.Image) Image {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if g, ok := img.(*image.Gray); ok {
		pix := make([]byte, 0, w*h)
		for y := b.Min.Y; y < b.Max.Y; y++ {
			start := g.PixOffset(b.Min.X, y)
			pix = append(pix, g.Pix[start:start+w]...)
		}
		return raw(pix, []int64{int64(h), int64(w)}, tmsv1.ColorOrder_COLOR_ORDER_GRAY)
	}
	rgba := make([]byte, 0, w*h*4)
	opaque := true
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			rgba = append(rgba, c.R, c.G, c.B, c.A)
			opaque = opaque && c.A == 0xff
		}
	}
	if !opaque {
		return raw(rgba, []int64{int64(h), int64(w), 4}, tmsv1.ColorOrder_COLOR_ORDER_RGBA)
	}
	rgb := make([]byte, 0, w*h*3)
	for i := 0; i < len(rgba); i += 4 {
		rgb = append(rgb, rgba[i:i+3]...)
	}
	return raw(rgb, []int64{int64(h), int64(w), 3}, tmsv1.ColorOrder_COLOR_ORDER_RGB)
}

func raw(pix []byte, shape []int64, order tmsv1.ColorOrder) Image {
	return Image{
		Data: pix, Shape: shape, DType: tmsv1.DType_D_TYPE_UINT8, Color: order,
		Encoding: tmsv1.Encoding_ENCODING_RAW,
	}
}

// ToImage converts raw 8-bit GRAY, RGB, BGR, RGBA or BGRA pixels to a Go image.
func (im Image) ToImage() (image.Image, error) {
	if im.Encoding != tmsv1.Encoding_ENCODING_RAW || im.DType != tmsv1.DType_D_TYPE_UINT8 {
		return nil, fmt.Errorf("tms: only raw uint8 pixels convert to image.Image, not %v %v", im.Encoding, im.DType)
	}
	if len(im.Shape) < 2 || len(im.Shape) > 3 {
		return nil, fmt.Errorf("tms: shape %v is not (H, W) or (H, W, C)", im.Shape)
	}
	h, w, channels := int(im.Shape[0]), int(im.Shape[1]), 1
	if len(im.Shape) == 3 {
		channels = int(im.Shape[2])
	}
	if len(im.Data) != h*w*channels {
		return nil, fmt.Errorf("tms: %d bytes do not fill shape %v", len(im.Data), im.Shape)
	}
	rect := image.Rect(0, 0, w, h)
	if channels == 1 {
		return &image.Gray{Pix: im.Data, Stride: w, Rect: rect}, nil
	}
	r, g, b, a := 0, 1, 2, -1
	switch {
	case im.Color == tmsv1.ColorOrder_COLOR_ORDER_RGB && channels == 3:
	case im.Color == tmsv1.ColorOrder_COLOR_ORDER_BGR && channels == 3:
		r, b = 2, 0
	case im.Color == tmsv1.ColorOrder_COLOR_ORDER_RGBA && channels == 4:
		a = 3
	case im.Color == tmsv1.ColorOrder_COLOR_ORDER_BGRA && channels == 4:
		r, b, a = 2, 0, 3
	default:
		return nil, fmt.Errorf("tms: %d channels of %v are not an image.Image", channels, im.Color)
	}
	out := image.NewNRGBA(rect)
	for i, o := 0, 0; i < len(im.Data); i, o = i+channels, o+4 {
		px := im.Data[i : i+channels]
		out.Pix[o], out.Pix[o+1], out.Pix[o+2], out.Pix[o+3] = px[r], px[g], px[b], 0xff
		if a >= 0 {
			out.Pix[o+3] = px[a]
		}
	}
	return out, nil
}

func (im Image) message() *tmsv1.Image {
	return &tmsv1.Image{
		Data: im.Data, Shape: im.Shape, Dtype: im.DType, ColorOrder: im.Color, Encoding: im.Encoding,
	}
}

func imageOf(m *tmsv1.Image) Image {
	return Image{
		Data: m.GetData(), Shape: m.GetShape(), DType: m.GetDtype(), Color: m.GetColorOrder(),
		Encoding: m.GetEncoding(),
	}
}

// Pixel is an element type image.proto can carry. float16 has no Go type: send its bits as
// uint16 with RawImage and D_TYPE_FLOAT16 (Float16Bits makes them).
type Pixel interface {
	uint8 | int8 | uint16 | int16 | int32 | int64 | float32 | float64 | bool
}

// FromPixels is raw pixels of any dtype image.proto has, in C order: shape is (H, W) or
// (H, W, C) and len(pix) their product.
func FromPixels[T Pixel](pix []T, shape []int64, order tmsv1.ColorOrder) (Image, error) {
	var zero T
	var dtype tmsv1.DType
	switch any(zero).(type) {
	case uint8:
		dtype = tmsv1.DType_D_TYPE_UINT8
	case int8:
		dtype = tmsv1.DType_D_TYPE_INT8
	case uint16:
		dtype = tmsv1.DType_D_TYPE_UINT16
	case int16:
		dtype = tmsv1.DType_D_TYPE_INT16
	case int32:
		dtype = tmsv1.DType_D_TYPE_INT32
	case int64:
		dtype = tmsv1.DType_D_TYPE_INT64
	case float32:
		dtype = tmsv1.DType_D_TYPE_FLOAT32
	case float64:
		dtype = tmsv1.DType_D_TYPE_FLOAT64
	case bool:
		dtype = tmsv1.DType_D_TYPE_BOOL
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, pix); err != nil {
		return Image{}, fmt.Errorf("tms: pixels: %w", err)
	}
	return RawImage(buf.Bytes(), shape, dtype, order)
}

// RawImage is raw pixels already laid out as bytes (C order, little-endian), checked against
// shape and dtype.
func RawImage(data []byte, shape []int64, dtype tmsv1.DType, order tmsv1.ColorOrder) (Image, error) {
	size, ok := itemSize[dtype]
	if !ok {
		return Image{}, fmt.Errorf("tms: dtype %v is not one image.proto carries", dtype)
	}
	if len(shape) < 2 || len(shape) > 3 {
		return Image{}, fmt.Errorf("tms: shape %v is not (H, W) or (H, W, C)", shape)
	}
	n := int64(size)
	for _, d := range shape {
		n *= d
	}
	if n != int64(len(data)) {
		return Image{}, fmt.Errorf("tms: %d bytes do not fill shape %v of %v", len(data), shape, dtype)
	}
	return Image{Data: data, Shape: shape, DType: dtype, Color: order, Encoding: tmsv1.Encoding_ENCODING_RAW}, nil
}

var itemSize = map[tmsv1.DType]int{
	tmsv1.DType_D_TYPE_UINT8: 1, tmsv1.DType_D_TYPE_INT8: 1, tmsv1.DType_D_TYPE_BOOL: 1,
	tmsv1.DType_D_TYPE_UINT16: 2, tmsv1.DType_D_TYPE_INT16: 2, tmsv1.DType_D_TYPE_FLOAT16: 2,
	tmsv1.DType_D_TYPE_INT32: 4, tmsv1.DType_D_TYPE_FLOAT32: 4,
	tmsv1.DType_D_TYPE_INT64: 8, tmsv1.DType_D_TYPE_FLOAT64: 8,
}

// Float16Bits is the IEEE 754 half-precision number nearest f, as its bits (ties to even; past
// the largest half, 65504, infinity), for sending float16 pixels with RawImage:
//
//	data := binary.LittleEndian.AppendUint16(nil, tmsclient.Float16Bits(0.25))
func Float16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp, mant := int(b>>23&0xff), b&0x7fffff
	if exp == 0xff { // infinity or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15 // the half's biased exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	var m, shift uint32 // m: the bits kept (rounded below), shift: how many are dropped
	if e > 0 {
		m, shift = uint32(e)<<23|mant, 13 // the mantissa's carry rounds into the exponent
	} else {
		if exp == 0 || 14-e > 24 { // float32 subnormals and what is below half the smallest half
			return sign
		}
		m, shift = 0x800000|mant, uint32(14-e) // a half subnormal: m × 2^-24
	}
	kept, rest, half := m>>shift, m&(1<<shift-1), uint32(1)<<(shift-1)
	if rest > half || rest == half && kept&1 == 1 {
		kept++
	}
	return sign | uint16(kept)
}
