package injectortest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var spcGVK = schema.GroupVersionKind{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Kind: "SecretProviderClass"}

const (
	namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n  annotations:\n    kvinject.dev/vault: myvault\n"
	account   = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: orders\n  namespace: apps\n"
	spc       = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: orders\n  namespace: apps\nspec:\n  provider: azure\n"
)

// describe names each object as kind/namespace/name, in order.
func describe(objs []client.Object) []string {
	var out []string
	for _, o := range objs {
		kind := o.GetObjectKind().GroupVersionKind().Kind
		switch o.(type) {
		case *corev1.Namespace:
			kind = "Namespace"
		case *corev1.ServiceAccount:
			kind = "ServiceAccount"
		case *unstructured.Unstructured:
			kind = "unstructured " + kind
		}
		out = append(out, kind+"/"+o.GetNamespace()+"/"+o.GetName())
	}
	return out
}

func TestReadObjects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    string
		want    []string
		wantErr string // the error names the file and the document
	}{
		{
			name: "every supported kind, comments and empty documents skipped",
			data: "# the cluster\n---\n" + namespace + "---\n# only a comment\n---\n" + account + "---\n" + spc,
			want: []string{"Namespace//apps", "ServiceAccount/apps/orders", "unstructured SecretProviderClass/apps/orders"},
		},
		{name: "empty", data: "", want: nil},
		{
			name:    "malformed YAML in the third document",
			data:    namespace + "---\n" + account + "---\nkind: Namespace\nmetadata: [name: x\n---\n" + spc,
			wantErr: "cluster.yaml: document 3: not valid YAML",
		},
		{
			name:    "not an object",
			data:    namespace + "---\n- a\n- b\n",
			wantErr: "cluster.yaml: document 2: not a Kubernetes object",
		},
		{
			name:    "no kind",
			data:    "apiVersion: v1\nmetadata:\n  name: x\n",
			wantErr: "cluster.yaml: document 1: not a Kubernetes object",
		},
		{
			name:    "unsupported kind",
			data:    namespace + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
			wantErr: `cluster.yaml: document 2: unsupported kind "ConfigMap" of apiVersion "v1"`,
		},
		{
			name:    "a kind of another version",
			data:    strings.Replace(spc, "/v1\n", "/v1alpha1\n", 1),
			wantErr: `cluster.yaml: document 1: unsupported kind "SecretProviderClass" of apiVersion "secrets-store.csi.x-k8s.io/v1alpha1"`,
		},
		{
			name:    "a misspelt field of a typed object",
			data:    namespace + "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  annotation:\n    a: b\n",
			wantErr: `cluster.yaml: document 2: ServiceAccount: error unmarshaling JSON: while decoding JSON: json: unknown field "annotation"`,
		},
		{
			name:    "a field of the wrong type",
			data:    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [x]\n",
			wantErr: "cluster.yaml: document 1: Namespace: ",
		},
		{
			name:    "a bad document separator",
			data:    namespace + "--- x\n" + account,
			wantErr: "cluster.yaml: document 1: ",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := ReadObjects("cluster.yaml", []byte(tc.data), spcGVK)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one starting with %q (objects: %v)", err, tc.wantErr, describe(objs))
				}
				if objs != nil {
					t.Errorf("a failed load returned objects: %v", describe(objs))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, describe(objs)); d != "" {
				t.Errorf("objects (-want +got):\n%s", d)
			}
		})
	}
}

// TestReadObjectsContent checks that the typed objects hold what the file says.
func TestReadObjectsContent(t *testing.T) {
	objs, err := ReadObjects("cluster.yaml", []byte(namespace+"---\n"+spc), spcGVK)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("%d objects, want 2", len(objs))
	}
	ns, ok := objs[0].(*corev1.Namespace)
	if !ok || ns.Annotations["kvinject.dev/vault"] != "myvault" {
		t.Errorf("the Namespace is %#v", objs[0])
	}
	u, ok := objs[1].(*unstructured.Unstructured)
	if !ok || u.GroupVersionKind() != spcGVK {
		t.Fatalf("the SecretProviderClass is %#v", objs[1])
	}
	if p, _, _ := unstructured.NestedString(u.Object, "spec", "provider"); p != "azure" {
		t.Errorf("spec.provider = %q, want azure", p)
	}
}

// TestLoadObjects checks that a malformed file fails the load with a message
// that names the file and the document, and that a missing file fails too.
func TestLoadObjects(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(file, []byte(namespace+"---\n"+account+"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	objs, err := LoadObjects(file)
	if err == nil || !strings.Contains(err.Error(), file+": document 3: not valid YAML") {
		t.Errorf("LoadObjects of a file whose third document is malformed: %d objects, error %v; want an error naming %s and document 3", len(objs), err, file)
	}
	if _, err := LoadObjects(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("LoadObjects of a missing file: %v", err)
	}
}
