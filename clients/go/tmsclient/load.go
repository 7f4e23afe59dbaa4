package tmsclient

import (
	"errors"
	"math"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// The trailers every TMS response carries (see python_client/.../protocol/load.py).
const (
	// loadKey holds an ORCA load report (xds.data.orca.v3.OrcaLoadReport) whose
	// named_metrics hold in_flight and queued, and after a reload its number, reload.
	loadKey = "tms-load-bin"
	// identityKey holds "<instance id>/<pid>": which worker process answered.
	identityKey = "tms-worker"
)

const orcaNamedMetrics = 8 // OrcaLoadReport.named_metrics, a map<string, double>

// LoadReport is a worker's load as it last reported it.
type LoadReport struct {
	InFlight int   // calls the worker was running, the reporting one included
	Queued   int   // calls waiting for one of its threads
	Reload   int64 // the number of the server's last reload it had done; 0 before any
}

// Total is the calls ahead of a new one.
func (r LoadReport) Total() int { return r.InFlight + r.Queued }

var errMalformed = errors.New("tms: malformed load report")

// DecodeORCA returns the named metrics of an OrcaLoadReport; other fields are skipped, as
// protobuf would.
func DecodeORCA(data []byte) (map[string]float64, error) {
	metrics := map[string]float64{}
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, errMalformed
		}
		data = data[n:]
		if num == orcaNamedMetrics && typ == protowire.BytesType {
			entry, m := protowire.ConsumeBytes(data)
			if m < 0 {
				return nil, errMalformed
			}
			name, value, err := mapEntry(entry)
			if err != nil {
				return nil, err
			}
			metrics[name] = value
			data = data[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return nil, errMalformed
		}
		data = data[m:]
	}
	return metrics, nil
}

func mapEntry(entry []byte) (string, float64, error) {
	var name string
	var value float64
	for len(entry) > 0 {
		num, typ, n := protowire.ConsumeTag(entry)
		if n < 0 {
			return "", 0, errMalformed
		}
		entry = entry[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			s, m := protowire.ConsumeString(entry)
			if m < 0 {
				return "", 0, errMalformed
			}
			name, entry = s, entry[m:]
		case num == 2 && typ == protowire.Fixed64Type:
			v, m := protowire.ConsumeFixed64(entry)
			if m < 0 {
				return "", 0, errMalformed
			}
			value, entry = math.Float64frombits(v), entry[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, entry)
			if m < 0 {
				return "", 0, errMalformed
			}
			entry = entry[m:]
		}
	}
	return name, value, nil
}

// EncodeORCA is the OrcaLoadReport holding metrics as its named metrics (for tests and fakes).
func EncodeORCA(metrics map[string]float64) []byte {
	var out []byte
	for name, value := range metrics {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, name)
		entry = protowire.AppendTag(entry, 2, protowire.Fixed64Type)
		entry = protowire.AppendFixed64(entry, math.Float64bits(value))
		out = protowire.AppendTag(out, orcaNamedMetrics, protowire.BytesType)
		out = protowire.AppendBytes(out, entry)
	}
	return out
}

// parseLoad reads the tms-load-bin trailer; ok is false when it is missing or malformed.
func parseLoad(values []string) (LoadReport, bool) {
	if len(values) == 0 {
		return LoadReport{}, false
	}
	metrics, err := DecodeORCA([]byte(values[len(values)-1]))
	if err != nil {
		return LoadReport{}, false
	}
	return LoadReport{
		InFlight: int(metrics["in_flight"]), Queued: int(metrics["queued"]), Reload: int64(metrics["reload"]),
	}, true
}

// parseIdentity reads the tms-worker trailer, "<instance id>/<pid>".
func parseIdentity(values []string) (instance string, pid int64, ok bool) {
	if len(values) == 0 {
		return "", 0, false
	}
	instance, pidText, found := strings.Cut(values[len(values)-1], "/")
	if !found {
		return "", 0, false
	}
	pid, err := strconv.ParseInt(pidText, 10, 64)
	return instance, pid, err == nil
}
