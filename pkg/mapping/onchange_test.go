package mapping

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestResolveOnChange(t *testing.T) {
	tests := []struct {
		name        string
		ann         map[string]string
		hostNetwork bool
		rotation    time.Duration // the webhook's default
		want        string        // canonical form, or the error's text
		wantErr     bool
	}{
		{name: "none", want: ""},
		{name: "http", ann: map[string]string{AnnotationOnChange: " http:8080/-/reload "}, want: "http:8080/-/reload"},
		{name: "http options", ann: map[string]string{AnnotationOnChange: "http:9090/r;Method=put;retries=0"}, want: "http:9090/r;method=PUT;retries=0"},
		{name: "restart", ann: map[string]string{AnnotationOnChange: "restart"}, want: "restart"},
		{name: "restart on hostNetwork", ann: map[string]string{AnnotationOnChange: "restart"}, hostNetwork: true, want: "restart"},
		{name: "bad syntax", ann: map[string]string{AnnotationOnChange: "http:8080"}, wantErr: true, want: `kvinject.dev/on-change: "http:8080": no path`},
		{name: "rotation off on the pod", ann: map[string]string{AnnotationOnChange: "restart", AnnotationRotation: "off"}, wantErr: true,
			want: `kvinject.dev/on-change: "restart": kvinject.dev/rotation is off, so the secrets are read once`},
		{name: "rotation off by default", ann: map[string]string{AnnotationOnChange: "http:8080/r"}, rotation: -1, wantErr: true,
			want: "rotation is off by the webhook's default (--default-rotation=off)"},
		{name: "http on hostNetwork", ann: map[string]string{AnnotationOnChange: "http:8080/r"}, hostNetwork: true, wantErr: true,
			want: `kvinject.dev/on-change: "http:8080/r": the pod uses hostNetwork, so 127.0.0.1 is the node's`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationVault: "myvault", AnnotationSecrets: "a=B"}},
				Spec:       corev1.PodSpec{HostNetwork: tt.hostNetwork, Containers: []corev1.Container{{Name: "app"}}},
			}
			for k, v := range tt.ann {
				pod.Annotations[k] = v
			}
			d := Defaults{Identity: "system", Rotation: DefaultRotation}
			if tt.rotation < 0 {
				d.Rotation = 0
			}
			spec, _, err := Resolve(pod, nil, nil, d)
			switch {
			case tt.wantErr && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Resolve: %v; want an error containing %q", err, tt.want)
			case !tt.wantErr && err != nil:
				t.Errorf("Resolve: %v", err)
			case !tt.wantErr && spec.OnChange.String() != tt.want:
				t.Errorf("OnChange = %q, want %q", spec.OnChange.String(), tt.want)
			}
			if !tt.wantErr && tt.want != "" && spec.OnChange.Kind == "" {
				t.Errorf("OnChange lost: %+v", spec.OnChange)
			}
		})
	}
}

func TestOnChangePortWarning(t *testing.T) {
	for _, tt := range []struct {
		name   string
		action string
		ports  []corev1.ContainerPort
		init   bool // the port is declared by a native sidecar
		warn   bool
	}{
		{name: "declared", action: "http:8080/-/reload", ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
		{name: "declared by an init container", action: "http:8080/-/reload", ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}, init: true},
		{name: "other port", action: "http:9090/-/reload", ports: []corev1.ContainerPort{{ContainerPort: 8080}}, warn: true},
		{name: "udp", action: "http:8080/-/reload", ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolUDP}}, warn: true},
		{name: "none declared", action: "http:8080/-/reload", warn: true},
		{name: "restart", action: "restart"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationVault: "myvault", AnnotationSecrets: "a=B", AnnotationOnChange: tt.action}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
			}
			if tt.init {
				pod.Spec.InitContainers = []corev1.Container{{Name: "proxy", Ports: tt.ports}}
			} else {
				pod.Spec.Containers[0].Ports = tt.ports
			}
			_, warnings, err := Resolve(pod, nil, nil, Defaults{Identity: "system", Rotation: DefaultRotation})
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(warnings, "\n")
			if warned := strings.Contains(got, "declares containerPort"); warned != tt.warn {
				t.Errorf("warnings %q; want a port warning: %v", got, tt.warn)
			}
			if tt.warn && !strings.Contains(got, "kvinject.dev/on-change: no container of the pod declares containerPort") {
				t.Errorf("warning %q does not name the annotation", got)
			}
		})
	}
}

// TestOnChangeAllPinnedWarning: an action on a set whose entries are all
// pinned to a version never runs, which is warned about.
func TestOnChangeAllPinnedWarning(t *testing.T) {
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	for _, tt := range []struct {
		secrets string
		warn    bool
	}{
		{"a=A@" + v + ", b=B@" + v, true},
		{"a=A@" + v + ", b=B", false},
	} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationVault: "myvault", AnnotationSecrets: tt.secrets, AnnotationOnChange: "restart"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		}
		_, warnings, err := Resolve(pod, nil, nil, Defaults{Identity: "system", Rotation: DefaultRotation})
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(warnings, "\n")
		if warned := strings.Contains(got, `every entry of kvinject.dev/secrets is pinned to a version, so the set never changes and "restart" never runs`); warned != tt.warn {
			t.Errorf("%s: warnings %q; want the pinned warning: %v", tt.secrets, got, tt.warn)
		}
	}
}
