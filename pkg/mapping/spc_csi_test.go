package mapping

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func csiVol(name, class, secretRef string) corev1.Volume {
	v := corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
		Driver: CSIDriverName, VolumeAttributes: map[string]string{"secretProviderClass": class}}}}
	if secretRef != "" {
		v.CSI.NodePublishSecretRef = &corev1.LocalObjectReference{Name: secretRef}
	}
	return v
}

func mount(vol, path string) corev1.VolumeMount {
	return corev1.VolumeMount{Name: vol, MountPath: path, ReadOnly: true}
}

func TestFindCSIVolumes(t *testing.T) {
	spec := corev1.PodSpec{
		Volumes: []corev1.Volume{
			csiVol("store", "orders-akv", "sp-creds"),
			csiVol("other", "payments-akv", ""),
			{Name: "not-csi", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "other-driver", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "file.csi.azure.com", VolumeAttributes: map[string]string{"secretProviderClass": "orders-akv"}}}},
		},
		InitContainers: []corev1.Container{{Name: "migrate", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/init")}}},
		Containers: []corev1.Container{
			{Name: "app", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/secrets-store"), mount("other", "/mnt/payments")}},
			{Name: "proxy", VolumeMounts: []corev1.VolumeMount{{Name: "store", MountPath: "/etc/proxy/tls.pem", SubPath: "tls.pem"}}},
			{Name: "sidecar"},
		},
	}
	of, others := FindCSIVolumes(&spec, "orders-akv")
	want := []CSIVolume{{Name: "store", Class: "orders-akv", NodePublishSecretRef: "sp-creds", Mounts: []CSIMount{
		{Container: "migrate", Init: true, MountPath: "/mnt/init"},
		{Container: "app", MountPath: "/mnt/secrets-store"},
		{Container: "proxy", MountPath: "/etc/proxy/tls.pem", SubPath: "tls.pem"},
	}}}
	if d := cmp.Diff(want, of); d != "" {
		t.Errorf("volumes of the class (-want +got):\n%s", d)
	}
	wantOthers := []CSIVolume{{Name: "other", Class: "payments-akv", Mounts: []CSIMount{{Container: "app", MountPath: "/mnt/payments"}}}}
	if d := cmp.Diff(wantOthers, others); d != "" {
		t.Errorf("other volumes (-want +got):\n%s", d)
	}
}

// TestSPCHalfMigrated checks the refusal of a pod that still has the class's CSI
// volume, and its fix.
func TestSPCHalfMigrated(t *testing.T) {
	class := SecretProviderClass{Namespace: "apps", Name: "orders-akv", Provider: "azure", Parameters: map[string]string{
		"keyvaultName": "kv1", "useVMManagedIdentity": "true",
		"objects": "array:\n  - |\n    objectName: db\n    objectType: secret\n"}}
	for _, tc := range []struct {
		name        string
		ann         map[string]string
		spec        corev1.PodSpec
		want        []string
		notWant     []string
		wantWarning string
	}{
		{"one container", nil, corev1.PodSpec{
			Volumes:    []corev1.Volume{csiVol("store", "orders-akv", "sp-creds")},
			Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/secrets-store")}}},
		}, []string{`spec.volumes "store": the pod still has the CSI driver's volume of SecretProviderClass apps/orders-akv (mounted by "app")`,
			`nodePublishSecretRef (Secret "sp-creds"`, "then set kvinject.dev/mount-path: /mnt/secrets-store, so"}, []string{"kvinject.dev/containers:", "another directory"}, ""},
		{"mount path already set: only the removal", map[string]string{AnnotationMountPath: "/mnt/secrets-store"}, corev1.PodSpec{
			Volumes:    []corev1.Volume{csiVol("store", "orders-akv", "")},
			Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/secrets-store")}}},
		}, []string{`remove the volume and its volumeMounts in "app"`}, []string{"then set", "another directory"}, ""},
		{"init container and a sidecar without the mount", nil, corev1.PodSpec{
			Volumes:        []corev1.Volume{csiVol("store", "orders-akv", "")},
			InitContainers: []corev1.Container{{Name: "migrate", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/s")}}},
			Containers:     []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/s")}}, {Name: "sidecar"}},
		}, []string{"kvinject.dev/mount-path: /mnt/s and kvinject.dev/containers: migrate,app"}, nil, ""},
		{"different paths", nil, corev1.PodSpec{
			Volumes:    []corev1.Volume{csiVol("store", "orders-akv", "")},
			Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/a")}}, {Name: "worker", VolumeMounts: []corev1.VolumeMount{mount("store", "/mnt/b")}}},
		}, []string{`the containers mount it at different paths ("app" at /mnt/a, "worker" at /mnt/b)`}, []string{"mount-path: /mnt/a"}, ""},
		{"subPath", nil, corev1.PodSpec{
			Volumes:    []corev1.Volume{csiVol("store", "orders-akv", "")},
			Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{{Name: "store", MountPath: "/etc/app/db", SubPath: "db"}}}},
		}, []string{`container "app" mounts only "db" of it at /etc/app/db`}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ann := map[string]string{AnnotationSecretProviderClass: "orders-akv"}
			for k, v := range tc.ann {
				ann[k] = v
			}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: ann}, Spec: tc.spec}
			_, _, _, err := ApplySecretProviderClass(pod, nil, class)
			if err == nil {
				t.Fatal("admitted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ncontains %q", err, w)
				}
			}
		})
	}

	// Another class's volume stays, with a warning; several containers without
	// kvinject.dev/containers get a warning about who sees the files.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationSecretProviderClass: "orders-akv"}}, Spec: corev1.PodSpec{
		Volumes:    []corev1.Volume{csiVol("payments", "payments-akv", "")},
		Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{mount("payments", "/mnt/payments")}}, {Name: "sidecar"}},
	}}
	_, _, w, err := ApplySecretProviderClass(pod, nil, class)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(w, "\n")
	for _, want := range []string{`CSI volume "payments" of SecretProviderClass "payments-akv" remains`, `kvinject mounts the files into every regular container ("app", "sidecar")`} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings %q\ndo not contain %q", w, want)
		}
	}
}
