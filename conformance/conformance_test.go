// The upstream Gateway API conformance suite as one test binary: `go test -c` of this package
// links sigs.k8s.io/gateway-api/conformance, whose flags (--gateway-class,
// --conformance-profiles, --supported-features, --report-output, ...) it takes unchanged.
//
// One deviation from upstream's own conformance_test.go, for a TLS-passthrough-only
// implementation: the suite's setup waits for every Gateway of its base manifests to be
// Accepted and Programmed and every pod there to be Ready, and those Gateways have only HTTP
// and HTTPS listeners, which sniroute does not serve (their listeners are UnsupportedProtocol,
// so they are not Accepted) and no TLS test uses. With the base manifests as shipped the setup
// fails and no test runs. The base manifests here are upstream's with the suite's own opt-out
// annotation, gateway-api/skip-this-for-readiness, on each Gateway that has no TLS Passthrough
// listener, and without the CoreDNS Deployment, the UDPRoute tests' backend, whose image is
// not built here. Every test manifest is upstream's as shipped.
package conformance_test

import (
	"bytes"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/utils/kubernetes"
	"sigs.k8s.io/yaml"
)

// baseManifests is where the adjusted base manifests are served from.
const baseManifests = "sniroute/base-manifests.yaml"

// TestConformance runs the suite as upstream's own conformance_test.go does, on the adjusted
// base manifests.
func TestConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	base, err := fs.ReadFile(&conformance.Manifests, "base/manifests.yaml")
	if err != nil {
		t.Fatalf("read the suite's base manifests: %v", err)
	}
	adjusted, err := adjustBase(base)
	if err != nil {
		t.Fatalf("adjust the suite's base manifests: %v", err)
	}
	opts.BaseManifests = baseManifests
	opts.ManifestFS = append([]fs.FS{fstest.MapFS{baseManifests: &fstest.MapFile{Data: adjusted}}}, opts.ManifestFS...)
	conformance.RunConformanceWithOptions(t, opts)
}

// adjustBase returns the base manifests with the readiness opt-out on each Gateway without a
// TLS Passthrough listener and without the CoreDNS Deployment.
func adjustBase(base []byte) ([]byte, error) {
	var out bytes.Buffer
	for _, doc := range strings.Split(string(base), "\n---\n") {
		var object map[string]any
		if err := yaml.Unmarshal([]byte(doc), &object); err != nil {
			return nil, err
		}
		if object == nil {
			continue
		}
		metadata, _ := object["metadata"].(map[string]any)
		switch {
		case object["kind"] == "Deployment" && metadata["name"] == "coredns":
			continue
		case object["kind"] == "Gateway" && !hasPassthroughListener(object):
			annotations, _ := metadata["annotations"].(map[string]any)
			if annotations == nil {
				annotations = map[string]any{}
			}
			annotations[kubernetes.GatewayExcludedFromReadinessChecks] = "true"
			metadata["annotations"] = annotations
		}
		text, err := yaml.Marshal(object)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(text)
	}
	return out.Bytes(), nil
}

// hasPassthroughListener is whether a Gateway has a listener sniroute serves.
func hasPassthroughListener(gateway map[string]any) bool {
	spec, _ := gateway["spec"].(map[string]any)
	listeners, _ := spec["listeners"].([]any)
	for _, l := range listeners {
		listener, _ := l.(map[string]any)
		tls, _ := listener["tls"].(map[string]any)
		if listener["protocol"] == "TLS" && tls["mode"] == "Passthrough" {
			return true
		}
	}
	return false
}
