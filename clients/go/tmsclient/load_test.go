package tmsclient

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestDecodeORCARoundTrip(t *testing.T) {
	in := map[string]float64{"in_flight": 3, "queued": 2, "other": 0.5}
	got, err := DecodeORCA(EncodeORCA(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["in_flight"] != 3 || got["queued"] != 2 || got["other"] != 0.5 {
		t.Fatalf("got %v", got)
	}
}

func TestDecodeORCASkipsOtherFields(t *testing.T) {
	var data []byte
	data = protowire.AppendTag(data, 1, protowire.Fixed64Type) // cpu_utilization
	data = protowire.AppendFixed64(data, 0)
	data = protowire.AppendTag(data, 4, protowire.BytesType) // request_cost
	data = protowire.AppendBytes(data, []byte("xx"))
	data = append(data, EncodeORCA(map[string]float64{"queued": 7})...)
	data = protowire.AppendTag(data, 9, protowire.VarintType)
	data = protowire.AppendVarint(data, 300)
	got, err := DecodeORCA(data)
	if err != nil || got["queued"] != 7 || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestDecodeORCARejectsTruncated(t *testing.T) {
	data := EncodeORCA(map[string]float64{"in_flight": 1})
	for n := 1; n < len(data); n++ {
		if _, err := DecodeORCA(data[:n]); err == nil {
			t.Fatalf("%d of %d bytes decoded", n, len(data))
		}
	}
	if got, err := DecodeORCA(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty report: %v, %v", got, err)
	}
}

func TestTrailers(t *testing.T) {
	report, ok := parseLoad([]string{string(EncodeORCA(map[string]float64{"in_flight": 2, "queued": 1}))})
	if !ok || report != (LoadReport{InFlight: 2, Queued: 1}) || report.Total() != 3 {
		t.Fatalf("got %v %v", report, ok)
	}
	report, ok = parseLoad([]string{string(EncodeORCA(map[string]float64{"in_flight": 1, "reload": 3}))})
	if !ok || report != (LoadReport{InFlight: 1, Reload: 3}) {
		t.Fatalf("got %v %v", report, ok)
	}
	if _, ok := parseLoad([]string{"\xff"}); ok {
		t.Fatal("a malformed report was read")
	}
	instance, pid, ok := parseIdentity([]string{"abc123/4242"})
	if !ok || instance != "abc123" || pid != 4242 {
		t.Fatalf("got %q %d %v", instance, pid, ok)
	}
	for _, bad := range [][]string{nil, {"nopid"}, {"x/notanumber"}} {
		if _, _, ok := parseIdentity(bad); ok {
			t.Fatalf("%q read as an identity", bad)
		}
	}
}
